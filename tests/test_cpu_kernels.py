"""The fused CPU kernels (attention, LayerNorm, the GELU MLP) against XLA's versions of the same functions."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cpu_kernels as kernel_build
from genjax.nn import cpu_kernels
from genjax.nn.transformer import Transformer, causal_attention

if jax.default_backend() != "cpu":
    pytest.skip("CPU kernels", allow_module_level=True)
if kernel_build._compiler() is None:
    pytest.skip("no C++ compiler: the kernels cannot be built here", allow_module_level=True)
_OK, _WHY = kernel_build.register()
assert _OK, _WHY  # a compiler is there, so a failed build is a bug


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("B,T,H,K", [(2, 100, 3, 16), (1, 70, 2, 32), (2, 64, 2, 64), (1, 130, 1, 128)])
def test_attention_kernel_equals_masked_softmax(B, T, H, K):
    # T = 100, 70, 130: ragged last tiles; K from 16 to 128.
    kq, kk, kv, kg = jax.random.split(jax.random.key(B * T + K), 4)
    q, k, v, g = (jax.random.normal(x, (B, T, H, K)) for x in (kq, kk, kv, kg))
    assert cpu_kernels.attention_applies(q)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v) * g)
    ref = lambda q, k, v: causal_attention(q, k, v, jnp.arange(T), implementation="einsum")  # noqa: E731
    out = jax.jit(cpu_kernels.causal_self_attention)(q, k, v)
    # float32 with a different summation order: relative error ~1e-7.
    assert _rel(out, ref(q, k, v)) < 1e-5
    got = jax.jit(jax.grad(loss(cpu_kernels.causal_self_attention), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(ref), (0, 1, 2)))(q, k, v)
    for a, b in zip(got, want):
        assert _rel(a, b) < 1e-5


def test_attention_kernel_under_vmap_is_per_member():
    qkv = jax.random.normal(jax.random.key(3), (3, 4, 2, 40, 2, 16))  # (q|k|v, member, B, T, H, K)
    batched = jax.jit(jax.vmap(cpu_kernels.causal_self_attention))(*qkv)
    for m in range(4):
        np.testing.assert_allclose(batched[m], cpu_kernels.causal_self_attention(*qkv[:, m]), rtol=1e-6, atol=1e-6)


def test_packed_attention_kernel_equals_the_three_array_one():
    qkv = jax.random.normal(jax.random.key(4), (2, 3, 70, 3, 2, 32))  # (member, B, T, 3, H, K)
    g = jax.random.normal(jax.random.key(5), (2, 3, 70, 2, 32))

    def loss_packed(qkv, g):
        return jnp.sum(cpu_kernels.packed_causal_self_attention(qkv) * g)

    def loss_split(qkv, g):
        return jnp.sum(cpu_kernels.causal_self_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]) * g)
    # Bit for bit: the same arithmetic, only the addressing differs.
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.grad(loss_packed)))(qkv, g),
                                  jax.jit(jax.vmap(jax.grad(loss_split)))(qkv, g))
    np.testing.assert_array_equal(cpu_kernels.packed_causal_self_attention(qkv[0]),
                                  cpu_kernels.causal_self_attention(qkv[0, :, :, 0], qkv[0, :, :, 1], qkv[0, :, :, 2]))


def test_layer_norm_kernel_equals_flax_layer_norm_with_gradients():
    kx, ks, kb, kg = jax.random.split(jax.random.key(5), 4)
    x = 3.0 + 2.0 * jax.random.normal(kx, (4, 33, 48))  # an offset mean: the variance is centred
    params = {"scale": 1.0 + 0.1 * jax.random.normal(ks, (48,)), "bias": 0.1 * jax.random.normal(kb, (48,))}
    g = jax.random.normal(kg, x.shape)
    ln = nn.LayerNorm(epsilon=1e-6)

    def loss_ref(x, p):
        return jnp.sum(ln.apply({"params": p}, x) * g)

    def loss_kernel(x, p):
        return jnp.sum(cpu_kernels.layer_norm(x, p["scale"], p["bias"], 1e-6) * g)
    y = jax.jit(cpu_kernels.layer_norm)(x, params["scale"], params["bias"])
    assert _rel(y, ln.apply({"params": params}, x)) < 1e-6
    got = jax.jit(jax.grad(loss_kernel, (0, 1)))(x, params)
    want = jax.jit(jax.grad(loss_ref, (0, 1)))(x, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert _rel(a, b) < 1e-5


def test_layer_norm_kernel_under_vmap_keeps_each_members_scale():
    x = jax.random.normal(jax.random.key(6), (3, 5, 7, 32))
    scale = 1.0 + jax.random.normal(jax.random.key(7), (3, 32))
    bias = jax.random.normal(jax.random.key(8), (3, 32))

    def loss(x, s, b):
        return jnp.sum(jnp.sin(cpu_kernels.layer_norm(x, s, b)))
    got = jax.jit(jax.vmap(jax.grad(loss, (0, 1, 2))))(x, scale, bias)
    for m in range(3):
        want = jax.grad(loss, (0, 1, 2))(x[m], scale[m], bias[m])
        for a, b in zip(got, want):
            np.testing.assert_allclose(a[m], b, rtol=1e-5, atol=1e-5)


def _xla_mlp(x, w_in, b_in, w_out, b_out):
    return jax.nn.gelu(x @ w_in + b_in, approximate=True) @ w_out + b_out


@pytest.mark.parametrize("shape,F", [((3, 50, 32), 48), ((2, 7, 24), 40), ((130, 16), 1000)])
def test_gelu_mlp_equals_the_xla_mlp_with_gradients(shape, F):
    # 150, 14 and 130 rows: ragged 16-row tasks; F = 1000: a ragged vector tail.
    D = shape[-1]
    ks = jax.random.split(jax.random.key(F), 6)
    args = (3.0 * jax.random.normal(ks[0], shape),  # pre-activations out to |x| ~ 10: both GELU tails
            jax.random.normal(ks[1], (D, F)) / np.sqrt(D), 0.5 * jax.random.normal(ks[2], (F,)),
            jax.random.normal(ks[3], (F, D)) / np.sqrt(F), 0.1 * jax.random.normal(ks[4], (D,)))
    g = jax.random.normal(ks[5], shape)
    assert cpu_kernels.gelu_mlp_applies(args[0])
    out, vjp = jax.vjp(jax.jit(cpu_kernels.gelu_mlp), *args)
    out_ref, vjp_ref = jax.vjp(_xla_mlp, *args)
    # float32; the kernel's exp polynomial is accurate to ~2e-7 relative.
    assert _rel(out, out_ref) < 1e-5
    for a, b in zip(vjp(g), vjp_ref(g)):
        assert _rel(a, b) < 1e-5


def test_gelu_mlp_under_vmap_is_per_member():
    ks = jax.random.split(jax.random.key(11), 6)
    args = (jax.random.normal(ks[0], (3, 2, 9, 16)), 0.3 * jax.random.normal(ks[1], (3, 16, 64)),
            jax.random.normal(ks[2], (3, 64)), 0.3 * jax.random.normal(ks[3], (3, 64, 16)), jax.random.normal(ks[4], (3, 16)))
    g = jax.random.normal(ks[5], (3, 2, 9, 16))

    def loss(*a):
        return jnp.sum(cpu_kernels.gelu_mlp(*a[:-1]) * a[-1])
    got = jax.jit(jax.vmap(jax.grad(loss, range(5))))(*args, g)
    for m in range(3):
        want = jax.grad(lambda *a: jnp.sum(_xla_mlp(*a) * g[m]), range(5))(*(a[m] for a in args))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a[m], b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])  # the packed and the three-array kernel
def test_transformer_with_kernels_equals_the_xla_transformer(positions):
    cfg = dict(vocab_size=19, num_layers=2, d_model=32, num_heads=2, max_len=40, positions=positions)
    plain = Transformer(**cfg, attention="einsum")
    fused = Transformer(**cfg, attention="cpu_kernel", layer_norm="cpu_kernel", gelu="cpu_kernel")
    tokens = jax.random.randint(jax.random.key(9), (3, 40), 0, 19)
    params = plain.init(jax.random.key(10), tokens)["params"]
    # Same parameter tree: checkpoints move between the two.
    assert jax.tree.structure(params) == jax.tree.structure(fused.init(jax.random.key(10), tokens)["params"])
    lowered = jax.jit(fused.apply).lower({"params": params}, tokens).as_text()
    for target in ("causal_attention_forward", cpu_kernels.LAYER_NORM_FORWARD, cpu_kernels.BIAS_GELU_FORWARD):
        assert target in lowered  # the kernels run, not XLA's fallbacks

    def loss(net):
        return lambda p: jnp.mean(jax.nn.log_softmax(net.apply({"params": p}, tokens))[..., 0])
    assert _rel(jax.jit(fused.apply)({"params": params}, tokens), jax.jit(plain.apply)({"params": params}, tokens)) < 1e-5
    got, want = (jax.jit(jax.grad(loss(net)))(params) for net in (fused, plain))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert _rel(a, b) < 1e-4  # LayerNorm-scale gradients: sums over 120 rows of float32 terms


def test_kernels_fall_back_where_they_do_not_apply_and_options_resolve(monkeypatch):
    q = jnp.zeros((1, 8, 1, 24))  # head 24: no multiple of 16
    assert not cpu_kernels.attention_applies(q) and not cpu_kernels.attention_applies(q[..., :16].astype(jnp.bfloat16))
    net = Transformer(vocab_size=7, num_layers=1, d_model=24, num_heads=1, max_len=8,
                      attention="cpu_kernel", layer_norm="cpu_kernel", gelu="cpu_kernel", dtype=jnp.bfloat16)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = net.init(jax.random.key(0), tokens)["params"]
    ref = net.clone(attention="blocked", layer_norm="xla", gelu="xla").apply({"params": params}, tokens)
    assert _rel(net.apply({"params": params}, tokens), ref) < 1e-5
    # The exact (erf) GELU has no kernel: gelu="cpu_kernel" keeps XLA's MLP for it.
    exact = net.clone(dtype=jnp.float32, gelu_approximate=False)
    ref = exact.clone(gelu="xla").apply({"params": params}, tokens)
    assert _rel(exact.apply({"params": params}, tokens), ref) < 1e-5
    kernels = {"attention": "cpu_kernel", "layer_norm": "cpu_kernel", "gelu": "cpu_kernel"}
    assert kernel_build.kernel_options() == kernels
    assert kernel_build.kernel_options("einsum", "xla", "xla") == {"attention": "einsum", "layer_norm": "xla", "gelu": "xla"}
    monkeypatch.setattr(kernel_build, "register", lambda: (False, "no C++ compiler"))
    assert kernel_build.kernel_options() == {"attention": "auto", "layer_norm": "xla", "gelu": "xla"}
    with pytest.raises(ValueError, match="'cpu_kernel' needs the compiled CPU kernels.*no C\\+\\+ compiler"):
        kernel_build.kernel_options("cpu_kernel")
    with pytest.raises(ValueError, match="head size 24; the CPU attention kernel takes float32"):
        cpu_kernels.causal_self_attention(q, q, q)
    with pytest.raises(ValueError, match=r"v is float32\[1, 8, 1, 32\]; expected q's float32\[1, 8, 1, 16\]"):
        cpu_kernels.causal_self_attention(q[..., :16], q[..., :16], jnp.zeros((1, 8, 1, 32)))
    with pytest.raises(ValueError, match=r"scale is float32\[5\] for x float32\[2, 4\]"):
        cpu_kernels.layer_norm(jnp.zeros((2, 4)), jnp.ones(5), jnp.zeros(4))
    with pytest.raises(ValueError, match="layer_norm='fast'"):
        net.clone(layer_norm="fast").init(jax.random.key(0), tokens)
    with pytest.raises(ValueError, match="gelu='fast'; expected one of"):
        net.clone(gelu="fast").init(jax.random.key(0), tokens)
    with pytest.raises(ValueError, match=r"bias is float32\[3\] for y float32\[2, 4\]"):
        cpu_kernels.gelu_mlp(jnp.zeros((2, 5)), jnp.zeros((5, 4)), jnp.zeros(3), jnp.zeros((4, 5)), jnp.zeros(5))
