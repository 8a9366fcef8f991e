"""Exact arithmetic (range) coding driven by an autoregressive model.

A model's next-symbol distribution p(. | x_<t) codes x_t in about -log2 p(x_t | x_<t)
bits (Shannon 1948; Rissanen 1976; Witten, Neal & Cleary 1987), so a language
model's cross-entropy is a compression rate that an arithmetic coder achieves.

The coder is a 32-bit range coder (Martin 1979) with LZMA's carry propagation
(`cache` + pending 0xFF bytes): range in [2^24, 2^32), frequencies summing to
TOTAL = 2^16, a symbol with cumulative frequency c and frequency f shrinks the
interval to [low + r c, low + r (c + f)) with r = floor(range / TOTAL), and bytes
leave when range < 2^24. Every operation is exact integer arithmetic, so encoder
and decoder agree bit for bit once they see the same frequencies.

Frequencies come from the model's float probabilities by `quantize`, which
guarantees every symbol a frequency >= 1 (any byte stays codable). The float
probabilities must be computed identically in both directions: `code_chunk`
is one jitted program used for both, with the direction a traced flag.

Costs: quantization loses KL(p || q) bits per symbol; the range truncation
r * TOTAL <= range loses at most log2(1 + TOTAL / 2^24) < 0.0057 bits per symbol,
typically far less; the stream ends with 4 flush bytes.

Long inputs use a sliding window (`code_chunk`): symbol t is predicted from the
start token and x_<t truncated to the last `keep + 1` .. `max_len` tokens. When
the cache is full, the last `keep` fed tokens are re-fed from position 0 and
decoding goes on from position `keep`.
"""
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genjax.nn.transformer import KVCache, Transformer

TOTAL_BITS = 16
TOTAL = 1 << TOTAL_BITS
_TOP = 1 << 24
_MASK32 = (1 << 32) - 1
_MAX_RENORM = 2  # range >= 2^24 / TOTAL * 1 = 2^8 after a symbol: two byte shifts restore 2^24


def quantize(logits_BV: jax.Array) -> jax.Array:
    """Integer frequencies int32 (B, V), each >= 1, summing to TOTAL exactly.

    f_i = max(1, floor(p_i TOTAL)) with p = softmax(logits) in float32; the
    difference TOTAL - sum f goes to the most likely symbol. That symbol keeps
    f >= 1: with b symbols raised to 1 it had f >= (TOTAL - b) / (V - b) - 1, and
    (TOTAL - b) >= (b + 2)(V - b) for all b < V when TOTAL >= (V + 2)^2 / 4 + V.
    """
    V = logits_BV.shape[-1]
    if TOTAL < (V + 2) ** 2 // 4 + V:
        raise ValueError(f"vocabulary of {V} symbols is too large for TOTAL={TOTAL}")
    p_BV = jax.nn.softmax(logits_BV.astype(jnp.float32), axis=-1)
    p_BV = jnp.where(jnp.isfinite(p_BV), p_BV, 0.0)
    f_BV = jnp.maximum(jnp.floor(p_BV * TOTAL).astype(jnp.int32), 1)
    deficit_B = TOTAL - jnp.sum(f_BV, axis=-1)
    top_BV = jnp.arange(V) == jnp.argmax(p_BV, axis=-1)[..., None]
    return f_BV + jnp.where(top_BV, deficit_B[..., None], 0)


def cumulative(freq_BV: jax.Array) -> jax.Array:
    """cdf int32 (B, V + 1): cdf[0] = 0, cdf[s + 1] = f_0 + ... + f_s."""
    zeros = jnp.zeros(freq_BV.shape[:-1] + (1,), freq_BV.dtype)
    return jnp.concatenate([zeros, jnp.cumsum(freq_BV, axis=-1)], axis=-1)


# ----------------------------------------------------------------------------- encoder (host)

def encode(cum_N, freq_N) -> bytes:
    """Range-codes symbols given each one's cumulative frequency and frequency.

    cum_N, freq_N: integers with freq >= 1 and cum + freq <= TOTAL. Pure Python
    integers (exact); returns the coded bytes (4 + about sum log2(TOTAL / f) / 8).
    """
    cum_N = np.asarray(cum_N, np.int64)
    freq_N = np.asarray(freq_N, np.int64)
    if cum_N.shape != freq_N.shape or cum_N.ndim != 1:
        raise ValueError(f"cum and freq have shapes {cum_N.shape} and {freq_N.shape}; "
                         "expected equal 1-D shapes")
    bad = np.flatnonzero((freq_N < 1) | (cum_N < 0) | (cum_N + freq_N > TOTAL))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"symbol {i} has cum={int(cum_N[i])}, freq={int(freq_N[i])}; expected "
                         f"freq >= 1 and 0 <= cum, cum + freq <= {TOTAL}")
    low, rng, cache, pending = 0, _MASK32, 0, 1
    out = bytearray()

    def shift_low():
        nonlocal low, cache, pending
        if low < 0xFF000000 or low > _MASK32:
            carry = low >> 32
            byte = cache
            for _ in range(pending):
                out.append((byte + carry) & 0xFF)
                byte = 0xFF
            pending = 0
            cache = (low >> 24) & 0xFF
        pending += 1
        low = (low & 0x00FFFFFF) << 8

    for c, f in zip(cum_N.tolist(), freq_N.tolist()):
        r = rng >> TOTAL_BITS
        low += r * c
        rng = r * f
        while rng < _TOP:
            rng <<= 8
            shift_low()
    for _ in range(5):
        shift_low()
    # The first byte is the initial cache (0): low + range never passes 2^32 at
    # the top, so no carry reaches it; drop it.
    assert out[0] == 0
    return bytes(out[1:])


def max_symbols(num_bytes: int, vocab_size: int) -> int:
    """An upper bound on how many symbols an `encode` output of `num_bytes` bytes holds,
    when the frequencies come from `quantize` over `vocab_size` symbols.

    A decoder reads zeros past the end of its stream, so it will "decode" any
    number of symbols from any bytes; this bound is what lets a container reject
    an impossible length before allocating or decoding anything. It holds
    because `quantize` gives each of the V symbols a frequency >= 1, so the
    coded one has f <= TOTAL - V + 1 and each symbol shrinks the range by a
    factor <= q = (TOTAL - V + 1) / TOTAL (r = floor(range / TOTAL) <= range / TOTAL).
    After N symbols and S byte shifts, 2^24 <= range < 2^32 q^N 2^(8 S), so
    S > N log2(1/q) / 8 - 1; `encode` returns S + 4 bytes (5 flush shifts,
    the leading cache byte dropped). Hence N < 8 (num_bytes - 3) / log2(1/q):
    about 1,422 symbols per byte for V = 256, TOTAL = 2^16, however good the model.
    """
    if vocab_size < 2 or TOTAL < (vocab_size + 2) ** 2 // 4 + vocab_size:
        raise ValueError(f"vocab_size={vocab_size}; expected 2 <= vocab_size with "
                         f"TOTAL={TOTAL} >= (V + 2)^2 / 4 + V (see quantize)")
    if num_bytes < 4:
        return 0  # `encode` never returns fewer than 4 bytes
    bits_per_symbol = np.log2(TOTAL / (TOTAL - vocab_size + 1))
    # Round up (and by one more) so float rounding can only loosen the bound.
    return int(np.floor(8 * (num_bytes - 3) / bits_per_symbol * (1 + 1e-12))) + 1


# ----------------------------------------------------------------------------- decoder (jit)

class DecoderState(NamedTuple):
    """Per lane: code (value - low) and range, uint32; ptr, the next byte to read."""

    code: jax.Array
    rng: jax.Array
    ptr: jax.Array


def init_decoder(stream_BS: jax.Array) -> DecoderState:
    """Reads the first 4 bytes of each lane's stream (uint8 (B, S), S >= 4)."""
    head = stream_BS[:, :4].astype(jnp.uint32)
    code = (head[:, 0] << 24) | (head[:, 1] << 16) | (head[:, 2] << 8) | head[:, 3]
    B = stream_BS.shape[0]
    return DecoderState(code, jnp.full((B,), _MASK32, jnp.uint32), jnp.full((B,), 4, jnp.int32))


def decode_symbol(state: DecoderState, freq_BV: jax.Array, stream_BS: jax.Array):
    """One symbol per lane: (symbols int32 (B,), new state). Mirrors `encode` exactly.

    Reads past the end of a lane's stream see zeros (indices are clamped; the
    encoder's flush bytes make those reads unnecessary for valid input).
    """
    cdf_BV1 = cumulative(freq_BV).astype(jnp.uint32)
    r = state.rng >> TOTAL_BITS
    v = jnp.minimum(state.code // r, TOTAL - 1)
    sym_B = jnp.sum(cdf_BV1[:, 1:] <= v[:, None], axis=-1).astype(jnp.int32)
    cum = jnp.take_along_axis(cdf_BV1, sym_B[:, None], axis=-1)[:, 0]
    freq = jnp.take_along_axis(cdf_BV1, sym_B[:, None] + 1, axis=-1)[:, 0] - cum
    code = state.code - r * cum
    rng = r * freq
    ptr = state.ptr
    S = stream_BS.shape[1]
    for _ in range(_MAX_RENORM):
        need = rng < _TOP
        byte = jnp.take_along_axis(stream_BS, jnp.minimum(ptr, S - 1)[:, None], axis=-1)[:, 0]
        byte = jnp.where(ptr < S, byte, 0).astype(jnp.uint32)
        code = jnp.where(need, (code << 8) | byte, code)
        rng = jnp.where(need, rng << 8, rng)
        ptr = ptr + need.astype(jnp.int32)
    return sym_B, DecoderState(code, rng, ptr)


# ----------------------------------------------------------------------------- model-driven coding

class CoderState(NamedTuple):
    """Everything carried from one chunk of coded symbols to the next.

    cache: the model's KV cache; pos: the position the next fed token takes
    (shared by the lanes, which step in lockstep); fed_BK: the last `keep` tokens
    fed (re-fed when the window slides); next_B: the token fed next (the start
    token, then the last symbol); decoder: the range decoder's state.
    """

    cache: KVCache
    pos: jax.Array
    fed_BK: jax.Array
    next_B: jax.Array
    decoder: DecoderState


def init_coder(net: Transformer, batch: int, *, keep: int, start_token: int) -> CoderState:
    """Fresh state for `batch` lanes. The decoder part is set per chunk (`code_chunk`)."""
    check_window(net, keep)
    zeros = jnp.zeros((batch,), jnp.uint32)
    return CoderState(
        cache=net.init_cache(batch), pos=jnp.int32(0),
        fed_BK=jnp.zeros((batch, keep), jnp.int32),
        next_B=jnp.full((batch,), start_token, jnp.int32),
        decoder=DecoderState(zeros, zeros, jnp.zeros((batch,), jnp.int32)))


def check_window(net: Transformer, keep: int) -> None:
    if not 1 <= keep < net.max_len:
        raise ValueError(f"keep={keep}: the context kept when the window slides must be in "
                         f"[1, max_len) = [1, {net.max_len})")
    if net.max_len % (net.max_len - keep):
        raise ValueError(f"keep={keep}: max_len - keep = {net.max_len - keep} must divide "
                         f"max_len = {net.max_len} (e.g. keep = max_len / 2)")


@partial(jax.jit, static_argnames=("net",))
def code_chunk(net: Transformer, params, state: CoderState, symbols_BC, stream_BS, decoding):
    """Runs the model over C coding steps for B lanes, in one compiled program for
    both directions (so the probabilities, and hence the frequencies, are bit-identical).

    symbols_BC: the symbols to encode (ignored when decoding); stream_BS: uint8,
    each lane's coded bytes from its current read position (ignored when
    encoding); decoding: a traced bool.

    Returns (state, out) with out = dict(symbols int32 (B, C): the symbols coded
    (decoded ones when decoding), cum and freq int32 (B, C): their quantized
    cumulative frequency and frequency, bits float32 (B, C): -log2 p of the
    symbol under the float model, the cross-entropy the coder aims at).
    """
    keep = state.fed_BK.shape[1]
    window, period = net.max_len, net.max_len - keep
    C = symbols_BC.shape[1]
    if C % period:
        raise ValueError(f"chunk of {C} steps is not a multiple of max_len - keep = {period}")
    decoding = jnp.asarray(decoding, bool)

    def refill(cache, fed_BK):
        _, cache = net.prefill(params, fed_BK, cache)
        return cache

    def step(carry, sym_known_B):
        cache, pos, fed_BK, next_B, dec = carry
        logits_BV, cache = net.decode_step(params, cache, next_B, pos)
        freq_BV = quantize(logits_BV)
        sym_dec_B, dec = decode_symbol(dec, freq_BV, stream_BS)
        sym_B = jnp.where(decoding, sym_dec_B, sym_known_B)
        cum_B = jnp.take_along_axis(cumulative(freq_BV), sym_B[:, None], axis=-1)[:, 0]
        f_B = jnp.take_along_axis(freq_BV, sym_B[:, None], axis=-1)[:, 0]
        logp_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
        bits_B = -jnp.take_along_axis(logp_BV, sym_B[:, None], axis=-1)[:, 0] / jnp.log(2.0)
        fed_BK = jnp.concatenate([fed_BK[:, 1:], next_B[:, None]], axis=1)
        carry = (cache, pos + 1, fed_BK, sym_B, dec)
        return carry, (sym_B, cum_B, f_B, bits_B)

    def segment(carry, syms_PB):
        # The window slides only here: positions reach max_len at a segment
        # start, because `period` divides max_len (checked in check_window).
        cache, pos, fed_BK, next_B, dec = carry
        full = pos >= window
        cache = jax.lax.cond(full, refill, lambda c, f: c, cache, fed_BK)
        pos = jnp.where(full, keep, pos)
        return jax.lax.scan(step, (cache, pos, fed_BK, next_B, dec), syms_PB)

    carry = (state.cache, state.pos, state.fed_BK, state.next_B, state.decoder)
    syms_GPB = symbols_BC.T.astype(jnp.int32).reshape(C // period, period, -1)
    carry, outs = jax.lax.scan(segment, carry, syms_GPB)
    sym_CB, cum_CB, f_CB, bits_CB = (o.reshape(C, -1) for o in outs)
    out = {"symbols": sym_CB.T, "cum": cum_CB.T, "freq": f_CB.T, "bits": bits_CB.T}
    return CoderState(*carry), out


def _stream_width(chunk: int) -> int:
    return _MAX_RENORM * chunk + 8  # a chunk reads at most 2 bytes per symbol


def code_batch(net: Transformer, params, sequences, *, keep: int, start_token: int,
               chunk: int | None = None, streams=None):
    """Encodes (streams=None) or decodes (streams given) B sequences side by side.

    sequences: when encoding, B integer arrays of symbols in [0, vocab); when
    decoding, B lengths. Lanes run in lockstep, so the work is B times the
    longest; each lane is coded independently of the others.

    Returns (coded, bits): `coded` is B byte strings (encoding) or B int32 arrays
    (decoding); `bits` is B float arrays of -log2 p(x_t | context) under the float
    model, the model's cross-entropy under exactly the coder's conditioning.
    A decoded sequence equals the encoded one only with the same net, params,
    keep, start_token, chunk and batch size B (the same compiled program).
    chunk: coding steps per compiled call, a multiple of max_len - keep
    (default: about 512).
    """
    decoding = streams is not None
    if decoding:
        lengths = [int(n) for n in sequences]
        if len(streams) != len(lengths):
            raise ValueError(f"{len(streams)} streams for {len(lengths)} lengths")
    else:
        sequences = [np.asarray(s) for s in sequences]
        for i, s in enumerate(sequences):
            if s.ndim != 1 or (s.size and (s.min() < 0 or s.max() >= net.vocab_size)):
                raise ValueError(f"sequence {i} must be 1-D symbols in [0, {net.vocab_size})")
        lengths = [len(s) for s in sequences]
    B = len(lengths)
    if B == 0:
        return [], []
    check_window(net, keep)
    period = net.max_len - keep
    chunk = chunk or period * max(1, 512 // period)
    if chunk < 1 or chunk % period:
        raise ValueError(f"chunk={chunk}; expected a positive multiple of max_len - keep = {period}")
    steps = -(-max(max(lengths), 1) // chunk) * chunk
    symbols_BT = np.zeros((B, steps), np.int32)
    if not decoding:
        for b, s in enumerate(sequences):
            symbols_BT[b, :len(s)] = s
    S = _stream_width(chunk)
    state = init_coder(net, B, keep=keep, start_token=start_token)
    if decoding:
        raw = [np.frombuffer(s, np.uint8) for s in streams]
        head = np.zeros((B, 4), np.uint8)
        for b, s in enumerate(raw):
            head[b, :min(4, len(s))] = s[:4]
        state = state._replace(decoder=init_decoder(jnp.asarray(head)))
        read_B = np.full((B,), 4, np.int64)
    window_BS = np.zeros((B, S), np.uint8)
    outs = {"symbols": [], "cum": [], "freq": [], "bits": []}
    for t0 in range(0, steps, chunk):
        if decoding:
            window_BS[:] = 0
            for b, s in enumerate(raw):
                piece = s[read_B[b]:read_B[b] + S]
                window_BS[b, :len(piece)] = piece
            dec = state.decoder._replace(ptr=jnp.zeros((B,), jnp.int32))
            state = state._replace(decoder=dec)
        state, out = code_chunk(net, params, state, jnp.asarray(symbols_BT[:, t0:t0 + chunk]),
                                jnp.asarray(window_BS), decoding)
        if decoding:
            read_B += np.asarray(state.decoder.ptr)
        for k in outs:
            outs[k].append(np.asarray(out[k]))
    outs = {k: np.concatenate(v, axis=1) for k, v in outs.items()}
    bits = [outs["bits"][b, :n] for b, n in enumerate(lengths)]
    if decoding:
        return [outs["symbols"][b, :n].astype(np.int32) for b, n in enumerate(lengths)], bits
    coded = [encode(outs["cum"][b, :n], outs["freq"][b, :n]) for b, n in enumerate(lengths)]
    return coded, bits
