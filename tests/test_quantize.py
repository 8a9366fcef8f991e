import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.autoregressive import coding
from genjax.autoregressive.decode import generate
from genjax.nn import quantize as q
from genjax.nn.transformer import Transformer

WINDOW, KEEP, START = 16, 8, 10


def _within_half_step(w, qa):
    """|w - dequantize| <= scale / 2 per element, the scale broadcast to w's matrix view.
    The bound holds for exact arithmetic; float32 rounding of w / s and s * q adds
    at most a few ulps of |w| (<= 1e-6 |w| here)."""
    deq = np.asarray(qa.dequantize())
    n_in, n_out = qa.values.shape
    groups = qa.scales.shape[0]
    s_IO = np.repeat(np.asarray(qa.scales), n_in // groups, axis=0)
    err_IO = np.abs(np.asarray(w, np.float32) - deq).reshape(n_in, n_out)
    w_IO = np.abs(np.asarray(w, np.float32)).reshape(n_in, n_out)
    assert np.all(err_IO <= s_IO / 2 + 1e-6 * w_IO), float(np.max(err_IO - s_IO / 2))
    return deq


def test_int8_per_channel_scales_are_absmax_over_127_and_error_is_half_a_step():
    w = jax.random.normal(jax.random.PRNGKey(0), (96, 40)) * jnp.linspace(0.01, 3.0, 40)
    qa = q.quantize_matrix(w, bits=8)
    assert qa.values.dtype == jnp.int8 and qa.values.shape == (96, 40)
    assert qa.scales.shape == (1, 40)
    np.testing.assert_array_equal(np.asarray(qa.scales[0]), np.asarray(jnp.max(jnp.abs(w), axis=0) / 127))
    assert int(jnp.max(jnp.abs(qa.values))) == 127
    _within_half_step(w, qa)


def test_int4_groups_have_their_own_scales_and_values_in_minus7_to_7():
    w = jax.random.normal(jax.random.PRNGKey(1), (128, 24))
    w = w.at[:32].multiply(100.0)  # one large group must not coarsen the others
    qa = q.quantize_matrix(w, bits=4, group_size=32)
    assert qa.values.dtype == jnp.int8 and qa.scales.shape == (4, 24)
    expected = jnp.max(jnp.abs(w.reshape(4, 32, 24)), axis=1) / 7
    np.testing.assert_array_equal(np.asarray(qa.scales), np.asarray(expected))
    assert int(jnp.max(jnp.abs(qa.values))) == 7
    deq = _within_half_step(w, qa)
    # Group-wise: the small groups keep their own resolution.
    assert np.max(np.abs(deq[32:] - np.asarray(w[32:]))) < 0.1 * np.max(np.abs(deq[:32] - np.asarray(w[:32])))


def test_all_zero_channel_quantizes_to_zero():
    w = jnp.zeros((8, 3)).at[:, 1].set(1.0)
    qa = q.quantize_matrix(w, bits=8)
    np.testing.assert_array_equal(np.asarray(qa.dequantize()), np.asarray(w))


def test_bad_bits_and_group_size_name_the_value_and_what_was_expected():
    w = jnp.ones((96, 8))
    with pytest.raises(ValueError, match=r"bits=3; expected one of \(4, 8\)"):
        q.quantize_matrix(w, bits=3)
    with pytest.raises(ValueError, match=r"bits=16; expected one of \(4, 8\)"):
        q.quantize({"kernel": w}, bits=16)
    with pytest.raises(ValueError, match=r"group_size=64 does not divide the input dimension 96; "
                                         r"expected a positive divisor of 96"):
        q.quantize_matrix(w, bits=4, group_size=64)
    with pytest.raises(ValueError, match=r"group_size=0"):
        q.quantize_matrix(w, bits=4, group_size=0)


@pytest.fixture(scope="module")
def tiny():
    net = Transformer(vocab_size=256, num_layers=2, d_model=64, num_heads=4, max_len=WINDOW,
                      positions="rotary")
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    # Larger weights than at init make the distributions far from uniform.
    params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim >= 2 else x, params)
    return net, params


def test_quantize_replaces_every_dense_kernel_and_only_those(tiny):
    net, params = tiny
    for embeddings in (False, True):
        qp = q.quantize(params, bits=4, group_size=16, embeddings=embeddings)
        flat = dict(jax.tree_util.tree_flatten_with_path(qp, is_leaf=lambda x: isinstance(x, q.QuantizedArray))[0])
        quantized = sorted("/".join(str(k.key) for k in path)
                           for path, leaf in flat.items() if isinstance(leaf, q.QuantizedArray))
        expected = ["unembed"] + [f"block_{i}/{m}/kernel" for i in range(2)
                                  for m in ("attn/qkv", "attn/out", "fc", "proj")]
        expected = sorted(expected + (["embed"] if embeddings else []))
        assert quantized == expected
        # The attention output kernel (H, K, D) contracts its first two axes.
        assert qp["block_0"]["attn"]["out"]["kernel"].values.shape == (64, 64)
        deq = q.dequantize(qp)
        assert jax.tree_util.tree_structure(deq) == jax.tree_util.tree_structure(params)
        for a, b in zip(jax.tree_util.tree_leaves(deq), jax.tree_util.tree_leaves(params)):
            assert a.shape == b.shape and a.dtype == b.dtype
    # Packed size: int8 weights 1 byte, int4 half a byte, plus float32 scales.
    n_float = q.quantized_bytes(params)
    assert n_float == 4 * sum(x.size for x in jax.tree_util.tree_leaves(params))
    for bits, group in ((8, 64), (4, 16)):
        qp = q.quantize(params, bits=bits, group_size=group)
        qs = [x for x in jax.tree_util.tree_leaves(qp, is_leaf=lambda x: isinstance(x, q.QuantizedArray))
              if isinstance(x, q.QuantizedArray)]
        n_weights = sum(x.values.size for x in qs)
        n_scales = sum(x.scales.size for x in qs)
        assert n_scales == sum((1 if bits == 8 else x.values.shape[0] // group) * x.values.shape[1] for x in qs)
        assert q.quantized_bytes(qp) == n_float - 4 * n_weights + n_weights * bits // 8 + 4 * n_scales


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_logits_are_close_to_the_float_models(tiny, bits):
    net, params = tiny
    qp = q.quantize(params, bits=bits, group_size=16)
    qnet = q.Dequantized(net)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, WINDOW), 0, 256)
    ref = net.apply({"params": params}, tokens)
    out = jax.jit(lambda p, t: qnet.apply({"params": p}, t))(qp, tokens)
    # Exactly the float model at the dequantized weights (up to float32 rounding).
    np.testing.assert_allclose(out, net.apply({"params": q.dequantize(qp)}, tokens), atol=1e-4, rtol=1e-5)
    # Tolerance: eps = ||W - W'|| / ||W|| over the quantized matrices (about
    # 0.6 % for int8, 8.5 % for int4 in groups of 16). To first order each of the
    # n = 9 quantized matrices on the path perturbs the logits by about eps of
    # their spread, and independent rounding errors add in quadrature: an RMS
    # error of about sqrt(n) eps std(logits) (measured: 2.8 eps for both widths).
    # Allowed: twice that, and 5 times that for the largest single logit error
    # (measured: 4.3 / 4.7 times the RMS).
    deq = q.dequantize(qp)
    pairs = [(a, b) for a, b in zip(jax.tree_util.tree_leaves(deq), jax.tree_util.tree_leaves(params))
             if not np.array_equal(a, b)]
    assert len(pairs) == 9
    eps = float(np.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in pairs) / sum(jnp.sum(b ** 2) for _, b in pairs)))
    assert eps < (0.01 if bits == 8 else 0.12)
    bound = 2 * np.sqrt(len(pairs)) * eps * float(jnp.std(ref))
    assert float(jnp.sqrt(jnp.mean((out - ref) ** 2))) < bound
    assert float(jnp.max(jnp.abs(out - ref))) < 5 * bound


def test_kv_cached_decoding_takes_quantized_params(tiny):
    net, params = tiny
    qp = q.quantize(params, bits=8)
    qnet = q.Dequantized(net)
    prompt = jnp.array([[1, 2, 3]], jnp.int32)
    got = generate(qnet, qp, jax.random.PRNGKey(0), prompt, max_new_tokens=8, temperature=0.0)
    want = generate(net, q.dequantize(qp), jax.random.PRNGKey(0), prompt, max_new_tokens=8, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_range_coder_round_trip_with_a_quantized_model(tiny):
    net, params = tiny
    qp = q.quantize(params, bits=4, group_size=16, embeddings=True)
    qnet = q.Dequantized(net)
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 256, 40), np.full(25, 65), np.array([], np.int64)]
    coded, bits_enc = coding.code_batch(qnet, qp, seqs, keep=KEEP, start_token=START, chunk=16)
    decoded, bits_dec = coding.code_batch(qnet, qp, [len(s) for s in seqs], keep=KEEP,
                                          start_token=START, chunk=16, streams=coded)
    for s, d, b, bb in zip(seqs, decoded, bits_enc, bits_dec):
        np.testing.assert_array_equal(d, s)
        np.testing.assert_array_equal(b, bb)
    # The repetitive sequence under the quantized model costs about what it does
    # under the float model.
    _, bits_float = coding.code_batch(net, params, seqs[1:2], keep=KEEP, start_token=START, chunk=16)
    assert abs(float(np.sum(bits_enc[1])) - float(np.sum(bits_float[0]))) < 0.1 * float(np.sum(bits_float[0])) + 2
