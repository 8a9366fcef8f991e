"""Transformer: KV-cache decoding, attention backends, causality, rotary, parameter counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.nn.transformer import (
    Transformer,
    causal_attention,
    causal_self_attention,
    cudnn_attention_applies,
    flops_per_token,
    num_params,
    rotary,
)


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    # Accelerators default to reduced-precision (TF32) float32 matmuls; the
    # tolerances here are for true float32 (already the default on CPU).
    with jax.default_matmul_precision("highest"):
        yield


V, L, D, H, MAXLEN = 17, 2, 32, 4, 24


def tiny(**kw):
    cfg = dict(vocab_size=V, num_layers=L, d_model=D, num_heads=H, max_len=MAXLEN)
    cfg.update(kw)
    return Transformer(**cfg)


def random_params(net, key, scale=0.5):
    """Every leaf redrawn from N(0, scale^2): attention far from uniform, logits O(1)."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def forward(net):
    """Jitted full forward pass (op-by-op eager dispatch is slow on CPU)."""
    return jax.jit(lambda params, x_BT: net.apply({"params": params}, x_BT))


def tokens(key, B=3, T=14):
    return jax.random.randint(key, (B, T), 0, V)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_kv_cache_decoding_matches_full_forward(positions):
    net = tiny(positions=positions)
    params = random_params(net, jax.random.key(1))
    x_BT = tokens(jax.random.key(2))
    full_BTV = forward(net)(params, x_BT)
    assert full_BTV.dtype == jnp.float32

    # Prefill 5 tokens, then one decode_step per position.
    extend = jax.jit(net.extend)
    logits_B5V, cache = extend(params, net.init_cache(x_BT.shape[0]), x_BT[:, :5], 0)
    steps = [logits_B5V]
    step = jax.jit(net.decode_step)
    for t in range(5, x_BT.shape[1]):
        logits_BV, cache = step(params, cache, x_BT[:, t], t)
        steps.append(logits_BV[:, None])
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full_BTV, atol=1e-5, rtol=1e-5)

    # Blocks of 3 tokens at a time (the speculative-decoding path).
    cache = net.init_cache(x_BT.shape[0])
    blocks = []
    for t in range(0, 12, 3):
        logits_B3V, cache = extend(params, cache, x_BT[:, t:t + 3], t)
        blocks.append(logits_B3V)
    np.testing.assert_allclose(jnp.concatenate(blocks, axis=1), full_BTV[:, :12], atol=1e-5, rtol=1e-5)
    assert cache.k.shape == (L, x_BT.shape[0], MAXLEN, H, D // H)


def test_stale_cache_entries_beyond_position_are_ignored():
    # Speculative decoding leaves rejected drafts in the cache; they must not matter.
    net = tiny()
    params = random_params(net, jax.random.key(3))
    x_BT = tokens(jax.random.key(4), T=10)
    extend = jax.jit(net.extend)
    _, clean = extend(params, net.init_cache(x_BT.shape[0]), x_BT[:, :6], 0)
    junk_BT = tokens(jax.random.key(5), T=4)
    _, dirty = extend(params, clean, junk_BT, 6)  # junk at positions 6..9
    a, _ = extend(params, clean, x_BT[:, 6:8], 6)
    b, _ = extend(params, dirty, x_BT[:, 6:8], 6)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_einsum_attention_equals_dot_product_attention(positions):
    net = tiny(positions=positions)
    params = random_params(net, jax.random.key(6))
    x_BT = tokens(jax.random.key(7))
    ein = forward(net)(params, x_BT)
    dpa = forward(net.clone(attention="xla"))(params, x_BT)
    np.testing.assert_allclose(ein, dpa, atol=1e-5, rtol=1e-5)
    # Cached path too (queries at positions 4..7 against a max_len cache).
    _, cache = jax.jit(net.prefill)(params, x_BT[:, :4])
    a, _ = jax.jit(net.extend)(params, cache, x_BT[:, 4:8], 4)
    b, _ = jax.jit(net.clone(attention="xla").extend)(params, cache, x_BT[:, 4:8], 4)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_causal_attention_function_against_explicit_softmax():
    kq, kk, kv = jax.random.split(jax.random.key(8), 3)
    q = jax.random.normal(kq, (2, 3, 4, 8))
    k = jax.random.normal(kk, (2, 7, 4, 8))
    v = jax.random.normal(kv, (2, 7, 4, 8))
    q_pos = jnp.array([2, 3, 4])
    # Reference: per query, softmax over the visible keys only.
    ref = np.zeros((2, 3, 4, 8))
    for t, p in enumerate(np.asarray(q_pos)):
        s = np.einsum("bhk,bshk->bhs", q[:, t], k[:, : p + 1]) / np.sqrt(8)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        ref[:, t] = np.einsum("bhs,bshk->bhk", w, v[:, : p + 1])
    for impl in ("einsum", "xla"):
        out = causal_attention(q, k, v, q_pos, implementation=impl)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(positions):
    net = tiny(positions=positions)
    params = random_params(net, jax.random.key(9))
    x_BT = tokens(jax.random.key(10), T=12)
    j = 7
    y_BT = x_BT.at[:, j].set((x_BT[:, j] + 1) % V)
    fx = forward(net)(params, x_BT)
    fy = forward(net)(params, y_BT)
    np.testing.assert_allclose(fx[:, :j], fy[:, :j], atol=1e-6, rtol=0)
    # ...while the changed position and later ones do move.
    assert np.all(np.abs(fx[:, j:] - fy[:, j:]).max(axis=-1) > 1e-3)


def test_rotary_scores_depend_only_on_relative_position():
    # RoFormer eq. 16: <R(m) q, R(n) k> is a function of m - n.
    kq, kk = jax.random.split(jax.random.key(11))
    q = jax.random.normal(kq, (1, 1, 1, 16))
    k = jax.random.normal(kk, (1, 1, 1, 16))

    def score(m, n):
        return jnp.sum(rotary(q, jnp.array([m])) * rotary(k, jnp.array([n])))

    for shift in (1, 5, 40):
        np.testing.assert_allclose(score(7 + shift, 3 + shift), score(7, 3), atol=1e-4, rtol=1e-5)
    assert abs(score(7, 3) - score(7, 4)) > 1e-3  # and it does depend on the offset
    # Rotation preserves norms.
    np.testing.assert_allclose(jnp.linalg.norm(rotary(q, jnp.array([9]))), jnp.linalg.norm(q), rtol=1e-5)


def test_tied_embeddings_share_one_matrix():
    tied, untied = tiny(tie_embeddings=True), tiny()
    p_tied = random_params(tied, jax.random.key(12))
    assert "unembed" not in p_tied and "unembed" in random_params(untied, jax.random.key(12))
    assert num_params(random_params(untied, jax.random.key(0))) - num_params(p_tied) == D * V

    # Token 5 never appears in the input, so its embedding row reaches the logits
    # only through the unembedding: a nonzero gradient iff the matrix is shared.
    x_BT = jnp.zeros((1, 4), jnp.int32)

    def logit5(embed, net, params):
        return net.apply({"params": {**params, "embed": embed}}, x_BT)[0, -1, 5]

    grad = jax.jit(jax.grad(logit5), static_argnums=1)
    g_tied = grad(p_tied["embed"], tied, p_tied)
    p_untied = random_params(untied, jax.random.key(12))
    g_untied = grad(p_untied["embed"], untied, p_untied)
    assert np.abs(g_tied[5]).max() > 1e-3
    assert np.abs(g_untied[5]).max() == 0.0


@pytest.mark.parametrize("positions,tie", [("learned", False), ("rotary", True)])
def test_num_params_matches_closed_form(positions, tie):
    F = 4 * D
    per_block = (2 * D) + (3 * D * D + 3 * D) + (D * D + D) + (2 * D) + (D * F + F) + (F * D + D)
    non_embedding = L * per_block + 2 * D  # + final LayerNorm
    embedding = V * D + (MAXLEN * D if positions == "learned" else 0) + (0 if tie else D * V)
    net = tiny(positions=positions, tie_embeddings=tie)
    assert net.num_params(non_embedding=True) == non_embedding
    assert net.num_params() == non_embedding + embedding
    assert num_params(random_params(net, jax.random.key(0))) == non_embedding + embedding


def test_flops_per_token_is_kaplan_6n_plus_attention():
    net = tiny()
    n = net.num_params(non_embedding=True)
    assert net.flops_per_token() == 6 * n + 6 * L * MAXLEN * D
    assert net.flops_per_token(n_ctx=10) == 6 * n + 6 * L * 10 * D
    assert flops_per_token(1000, num_layers=3, d_model=8, n_ctx=5) == 6000 + 6 * 3 * 5 * 8


def test_bfloat16_matmuls_keep_float32_logits():
    net = tiny()
    params = random_params(net, jax.random.key(13))
    x_BT = tokens(jax.random.key(14))
    f32 = forward(net)(params, x_BT)
    b16 = forward(net.clone(dtype=jnp.bfloat16))(params, x_BT)
    assert b16.dtype == jnp.float32
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 per operand); a dozen
    # chained matmuls stay within a few percent of the logit scale.
    err = float(jnp.abs(b16 - f32).max() / jnp.abs(f32).max())
    assert 0 < err < 0.05


def test_dropout_is_active_only_when_not_deterministic():
    net = tiny(dropout=0.5)
    params = random_params(net, jax.random.key(15))
    x_BT = tokens(jax.random.key(16))
    ref = forward(tiny())(params, x_BT)
    np.testing.assert_allclose(forward(net)(params, x_BT), ref, atol=1e-6, rtol=0)
    run = jax.jit(
        lambda k: net.apply({"params": params}, x_BT, deterministic=False, rngs={"dropout": jax.random.key(k)})
    )
    assert np.abs(run(0) - ref).max() > 1e-2
    assert np.abs(run(0) - run(1)).max() > 1e-2


def test_bad_configuration_raises():
    x = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="d_model=30 is not a multiple of num_heads=4"):
        tiny(d_model=30).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="positions='absolute'"):
        tiny(positions="absolute").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="sequence length 30 exceeds max_len=24"):
        tiny().init(jax.random.key(0), jnp.zeros((1, 30), jnp.int32))


@pytest.mark.parametrize("block_size", [4, 5])
def test_blocked_causal_attention_equals_masked_softmax(block_size):
    # T = 14 is no multiple of 4 or 5: the last block is ragged.
    kq, kk, kv = jax.random.split(jax.random.key(17), 3)
    q, k, v = (jax.random.normal(kx, (2, 14, 3, 8)) for kx in (kq, kk, kv))
    ref = causal_attention(q, k, v, jnp.arange(14), implementation="einsum")
    out = jax.jit(lambda q, k, v: causal_self_attention(q, k, v, implementation="blocked", block_size=block_size))(q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    for impl in ("einsum", "xla", "dpa", "auto"):
        np.testing.assert_allclose(causal_self_attention(q, k, v, implementation=impl), ref, atol=1e-5, rtol=1e-5)
    # The gradient too: the blocks' gradients assemble into the full one.
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
    g_ref = jax.grad(loss(lambda *a: causal_attention(*a, jnp.arange(14))), argnums=(0, 1, 2))(q, k, v)
    g_blk = jax.jit(jax.grad(loss(lambda *a: causal_self_attention(*a, implementation="blocked", block_size=block_size)),
                             argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_blk, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_auto_attention_and_exact_gelu():
    net = tiny()
    assert net.attention == "auto"
    params = random_params(net, jax.random.key(18))
    x_BT = tokens(jax.random.key(19))
    auto = forward(net)(params, x_BT)
    np.testing.assert_allclose(auto, forward(net.clone(attention="einsum"))(params, x_BT), atol=1e-5, rtol=1e-5)
    # The erf GELU is a different function from its tanh approximation (they
    # differ by up to ~5e-4 per unit), so the logits move, but only slightly.
    exact = forward(net.clone(gelu_approximate=False))(params, x_BT)
    diff = float(jnp.abs(exact - auto).max())
    assert 1e-6 < diff < 0.05 * float(jnp.abs(auto).max())
    with pytest.raises(ValueError, match="attention='flash'"):
        tiny(attention="flash").init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("T", [100, 256])  # 100: no multiple of cuDNN's tiles
def test_auto_attention_takes_cudnn_for_bfloat16_on_gpus(T):
    kq, kk, kv = jax.random.split(jax.random.key(21), 3)
    q, k, v = (jax.random.normal(kx, (2, T, 4, 64), jnp.bfloat16) for kx in (kq, kk, kv))
    assert cudnn_attention_applies(q) and not cudnn_attention_applies(q.astype(jnp.float32))
    ref = causal_attention(*(x.astype(jnp.float32) for x in (q, k, v)), jnp.arange(T), implementation="einsum")
    loss = lambda impl: lambda q, k, v: jnp.sum(causal_self_attention(q, k, v, implementation=impl).astype(jnp.float32) * ref)  # noqa: E731
    out = jax.jit(lambda q, k, v: causal_self_attention(q, k, v, implementation="auto"))(q, k, v)
    hlo = jax.jit(jax.grad(loss("auto"), argnums=(0, 1, 2))).lower(q, k, v).as_text()
    assert "cudnn" in hlo.lower()  # the fused kernel's custom call
    # bf16 inputs and output: relative error a few bf16 ulps (2^-8 = 0.4%).
    assert float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)) < 1e-2
    g_auto = jax.jit(jax.grad(loss("auto"), argnums=(0, 1, 2)))(q, k, v)
    g_xla = jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_auto, g_xla):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 2e-2
    # Ensemble members (vmap over a leading axis) take the same kernel.
    batched = jax.jit(jax.vmap(lambda q, k, v: causal_self_attention(q, k, v, implementation="auto")))(
        q[None].repeat(3, 0), k[None].repeat(3, 0), v[None].repeat(3, 0))
    diff = batched[1].astype(jnp.float32) - out.astype(jnp.float32)
    assert float(jnp.linalg.norm(diff) / jnp.linalg.norm(ref)) < 1e-2


def test_mfu_is_achieved_over_peak_flops():
    from genjax.train import mfu

    # 1000 tokens/s at 6 MFLOP/token is 6 GFLOP/s: half of a 12 GFLOP/s peak.
    assert mfu(1000.0, 6e6, 12e9) == pytest.approx(0.5)
    net = tiny()
    assert mfu(10.0, net.flops_per_token(), 1e9) == pytest.approx(10.0 * net.flops_per_token() / 1e9)
    with pytest.raises(ValueError, match="peak_flops_per_s=0"):
        mfu(1.0, 1.0, 0)
