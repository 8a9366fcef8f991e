"""The range coder: exact round trips, code length against -sum log2 q, the
frequency quantization, and model-driven coding with a sliding window."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.autoregressive import coding
from genjax.nn.transformer import Transformer

# Range truncation r * TOTAL <= range < (r + 1) * TOTAL with r >= 2^8 loses at most
# log2(1 + 2^-8) bits per symbol; the stream ends with 4 flush bytes (32 bits).
TRUNCATION_BITS = float(np.log2(1 + 2.0 ** -8))
FLUSH_BITS = 32


@jax.jit
def _decode_all(freq_NV, stream_S):
    """Decodes N symbols with per-step frequency tables (one lane)."""
    stream_1S = stream_S[None]

    def step(state, freq_V):
        sym, state = coding.decode_symbol(state, freq_V[None], stream_1S)
        return state, sym[0]

    state, syms = jax.lax.scan(step, coding.init_decoder(stream_1S), freq_NV)
    return syms, state.ptr[0]


def _round_trip(logits_NV, symbols_N):
    """Encodes symbols under quantize(logits); returns (bytes, decoded, bytes read, -sum log2 q)."""
    freq_NV = np.asarray(coding.quantize(jnp.asarray(logits_NV)))
    cdf_NV1 = np.asarray(coding.cumulative(jnp.asarray(freq_NV)))
    idx = np.arange(len(symbols_N))
    cum, freq = cdf_NV1[idx, symbols_N], freq_NV[idx, symbols_N]
    data = coding.encode(cum, freq)
    stream = np.frombuffer(data + bytes(8), np.uint8)  # zero padding beyond the end is harmless
    decoded, read = _decode_all(jnp.asarray(freq_NV), jnp.asarray(stream))
    ideal = float(-np.sum(np.log2(freq / coding.TOTAL)))
    return data, np.asarray(decoded), int(read), ideal


def _check(logits_NV, symbols_N):
    data, decoded, read, ideal = _round_trip(logits_NV, symbols_N)
    np.testing.assert_array_equal(decoded, symbols_N)
    assert read == len(data)  # the decoder consumes exactly the coded bytes
    assert 8 * len(data) <= ideal + TRUNCATION_BITS * len(symbols_N) + FLUSH_BITS
    return data, ideal


def test_round_trip_random_distributions_and_symbols_drawn_from_them():
    rng = np.random.default_rng(0)
    N, V = 3000, 256
    scale = rng.uniform(0.1, 8.0, (N, 1))  # from near-uniform to sharply peaked
    logits = (rng.standard_normal((N, V)) * scale).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    symbols = np.array([rng.choice(V, p=row) for row in p])
    data, ideal = _check(logits, symbols)
    # Symbols drawn from p cost about their entropy: the code is within the
    # quantization loss (|q - p| <= V / TOTAL per symbol here) of -sum log2 p.
    model_bits = float(-np.sum(np.log2(p[np.arange(N), symbols])))
    assert abs(8 * len(data) - model_bits) < 0.01 * model_bits + FLUSH_BITS


def test_round_trip_uniformly_random_symbols_and_small_vocabularies():
    rng = np.random.default_rng(1)
    for V in (2, 3, 17, 256):
        logits = rng.standard_normal((500, V)).astype(np.float32)
        _check(logits, rng.integers(0, V, 500))


def test_near_zero_probabilities_are_codable():
    # One symbol holds all the mass (p of the others ~ e^-100 underflows to 0):
    # every other symbol still gets frequency 1 and codes in 16 bits.
    rng = np.random.default_rng(2)
    N, V = 400, 256
    logits = np.full((N, V), -50.0, np.float32)
    top = rng.integers(0, V, N)
    logits[np.arange(N), top] = 50.0
    symbols = (top + rng.integers(1, V, N)) % V  # never the likely one
    data, ideal = _check(logits, symbols)
    assert ideal == pytest.approx(16.0 * N)  # -log2(1 / 2^16) each
    # -inf logits (a filtered distribution) too.
    logits_inf = np.where(logits < 0, -np.inf, 0.0).astype(np.float32)
    _check(logits_inf, symbols)


def test_symbol_with_probability_one_costs_almost_nothing():
    N, V = 5000, 256
    logits = np.full((N, V), -30.0, np.float32)
    logits[:, 7] = 30.0
    symbols = np.full(N, 7)
    data, ideal = _check(logits, symbols)
    # q = (TOTAL - 255) / TOTAL: 0.0056 bits each, so ~28 bits for 5000 symbols.
    assert ideal == pytest.approx(-N * np.log2((coding.TOTAL - 255) / coding.TOTAL), rel=1e-9)
    assert len(data) <= (ideal + TRUNCATION_BITS * N + FLUSH_BITS) / 8


def test_alternating_extremes_exercise_carries():
    # Very likely and very unlikely symbols in turn drive low close to 2^32
    # boundaries: long runs of 0xFF bytes and carries into them.
    rng = np.random.default_rng(3)
    N, V = 4000, 256
    logits = np.zeros((N, V), np.float32)
    logits[:, 255] = 40.0
    symbols = np.where(rng.random(N) < 0.9, 255, 254)
    _check(logits, symbols)
    logits[:, 0] = 45.0
    _check(logits, np.where(rng.random(N) < 0.5, 0, 255))


def test_quantize_frequencies_are_positive_sum_to_total_and_track_p():
    rng = np.random.default_rng(4)
    V = 256
    cases = [
        rng.standard_normal((64, V)) * 5,
        np.zeros((1, V)),                                  # uniform
        np.where(np.arange(V) < 128, 0.0, -200.0)[None],   # 128 symbols underflow
        np.where(np.arange(V) == 3, 100.0, 0.0)[None],     # one symbol ~ 1
    ]
    # The worst case for the deficit: b symbols far below 1/TOTAL and the rest
    # sharing the mass, for every b.
    for b in range(0, V, 15):
        cases.append(np.where(np.arange(V) < b, -100.0, 0.0)[None])
    for logits in cases:
        logits = jnp.asarray(logits, jnp.float32)
        f = np.asarray(coding.quantize(logits))
        assert f.dtype == np.int32 and f.min() >= 1
        np.testing.assert_array_equal(f.sum(-1), coding.TOTAL)
        p = np.asarray(jax.nn.softmax(logits, axis=-1))
        err = np.abs(f / coding.TOTAL - p)
        top = p.argmax(-1)
        # Non-top symbols are floor-rounded or raised to 1: off by < 1 / TOTAL;
        # the top symbol absorbs the others' rounding: off by < V / TOTAL.
        err_top = err[np.arange(len(p)), top]
        err[np.arange(len(p)), top] = 0
        assert err.max() <= 1.0 / coding.TOTAL + 1e-7
        assert err_top.max() <= V / coding.TOTAL + 1e-6


def test_encoder_rejects_impossible_frequencies():
    with pytest.raises(ValueError, match="freq=0"):
        coding.encode([0, 10], [5, 0])
    with pytest.raises(ValueError, match="cum=65535, freq=2"):
        coding.encode([65535], [2])
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        coding.encode([0, 1], [1])


def test_max_symbols_bounds_the_cheapest_possible_streams():
    # The cheapest symbol `quantize` allows has f = TOTAL - 255 (every other byte
    # keeps f = 1): runs of it give the most symbols per coded byte there can be.
    # The bound must hold for every run length, and be nearly reached (the range
    # truncation r = floor(range / TOTAL) makes real symbols cost a little more).
    f_max = coding.TOTAL - 255
    for n in (0, 1, 1000, 1423, 5000, 50_000):
        data = coding.encode(np.zeros(n, np.int64), np.full(n, f_max))
        bound = coding.max_symbols(len(data), 256)
        assert n <= bound, (n, len(data), bound)
        assert bound <= 1.15 * n + 2 * 1423, (n, len(data), bound)
    # At the other end of the interval: cum = 255, the top of [0, TOTAL).
    data = coding.encode(np.full(20_000, 255), np.full(20_000, f_max))
    assert 20_000 <= coding.max_symbols(len(data), 256)
    assert coding.max_symbols(4, 256) == 1423 and coding.max_symbols(3, 256) == 0
    # A frequency floor of 1 in 2^16 costs >= 0.0056 bits: about 1422 symbols per byte.
    assert coding.max_symbols(1_000_004, 256) == pytest.approx(1422.3e6, rel=1e-4)
    with pytest.raises(ValueError, match="vocab_size=1000"):
        coding.max_symbols(10, 1000)


# ----------------------------------------------------------------------------- model-driven

WINDOW, KEEP, START = 12, 8, 10


@pytest.fixture(scope="module")
def tiny_net():
    net = Transformer(vocab_size=256, num_layers=2, d_model=32, num_heads=2, max_len=WINDOW,
                      positions="rotary")
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    # Larger embeddings than at init make the distributions far from uniform.
    params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x, params)
    return net, params


def _context(seq, t):
    """The coder's conditioning for symbol t: fed tokens seq[0..t] (seq = [start] + x),
    the last K + 1 + ((t - W) mod (W - K)) of them once t >= W."""
    if t < WINDOW:
        return seq[: t + 1]
    m = (t - WINDOW) % (WINDOW - KEEP)
    return seq[t - KEEP - m: t + 1]


def test_code_batch_round_trip_and_bits_are_the_sliding_window_cross_entropy(tiny_net):
    net, params = tiny_net
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 256, n) for n in (0, 1, 7, 45)]
    seqs.append(np.full(30, 65))  # a repetitive sequence
    coded, bits = coding.code_batch(net, params, seqs, keep=KEEP, start_token=START, chunk=16)
    decoded, bits_back = coding.code_batch(net, params, [len(s) for s in seqs], keep=KEEP,
                                           start_token=START, chunk=16, streams=coded)
    for s, d, c, b, bb in zip(seqs, decoded, coded, bits, bits_back):
        np.testing.assert_array_equal(d, s)
        np.testing.assert_array_equal(b, bb)  # same program, same numbers
        # The code costs the cross-entropy, up to quantization (<= 1 % here,
        # where q differs from p by at most V / TOTAL) plus the flush bytes.
        assert 8 * len(c) <= 1.01 * float(np.sum(b)) + TRUNCATION_BITS * len(s) + FLUSH_BITS
    # bits[t] = -log2 p(x_t | the window the coder uses), computed here by a
    # plain forward pass over that window (cached and uncached logits agree
    # to float32 rounding).
    # Each window is right-padded to max_len (causal: padding after a position
    # does not change its logits) so one forward pass scores them all.
    x = seqs[3]
    seq = np.concatenate([[START], x])
    windows = np.zeros((len(x), WINDOW), np.int32)
    last = np.zeros(len(x), int)
    for t in range(len(x)):
        ctx = _context(seq, t)
        windows[t, :len(ctx)] = ctx
        last[t] = len(ctx) - 1
    logits = net.apply({"params": params}, jnp.asarray(windows))[np.arange(len(x)), last]
    expected = -np.asarray(jax.nn.log_softmax(logits))[np.arange(len(x)), x] / np.log(2)
    assert len(set(last.tolist())) > 3  # the window slid several times
    np.testing.assert_allclose(bits[3], expected, atol=2e-4)


def test_code_batch_bad_input(tiny_net):
    net, params = tiny_net
    with pytest.raises(ValueError, match=r"in \[0, 256\)"):
        coding.code_batch(net, params, [np.array([1, 256])], keep=KEEP, start_token=START)
    with pytest.raises(ValueError, match=r"keep=12.*\[1, 12\)"):
        coding.code_batch(net, params, [np.array([1, 2])], keep=WINDOW, start_token=START)
    with pytest.raises(ValueError, match="max_len - keep = 7 must divide"):
        coding.code_batch(net, params, [np.array([1, 2])], keep=5, start_token=START)
    with pytest.raises(ValueError, match="chunk=10; expected a positive multiple of max_len - keep = 4"):
        coding.code_batch(net, params, [np.array([1, 2])], keep=KEEP, start_token=START, chunk=10)
