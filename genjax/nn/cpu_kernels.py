"""Fused CPU kernels (XLA FFI custom calls): causal self-attention, LayerNorm, bias + GELU.

XLA:CPU runs attention as several passes over the (T, T) scores with copies
around small batched matmuls, and LayerNorm as separate reductions and
broadcasts; on a 2-core CPU the two cost more than the matrix products of a
small GPT (docs/performance.md). Two C++ kernels do each in one pass:

  causal_self_attention: FlashAttention-2 (Dao 2023, Algorithms 1 and 2) per
    (batch, head): query and key tiles of 64, an online softmax that keeps only
    the row log-sum-exp, a backward pass that recomputes probabilities tile by
    tile, tiles above the diagonal skipped.
  layer_norm: y = (x - mean) / sqrt(var + eps) * scale + bias (Ba et al. 2016)
    and its exact gradient, one pass per row.
  gelu_mlp: the transformer MLP, gelu(x w_in + b_in) w_out + b_out, with bias +
    tanh GELU in one vectorized pass each way (XLA:CPU makes two slow passes
    forward) and weight gradients arranged as XLA:CPU's fast plain products.

This module only *calls* the kernels by their FFI target names. Building the C++
sources (experiments/kernels/) and registering the targets is glue:
`experiments.cpu_kernels.register()`. Where a kernel does not apply (`*_applies`)
callers use XLA's version; both are float32-only and CPU-only.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

ATTENTION_FORWARD = "genjax_causal_attention_forward"
ATTENTION_BACKWARD = "genjax_causal_attention_backward"
PACKED_ATTENTION_FORWARD = "genjax_packed_causal_attention_forward"
PACKED_ATTENTION_BACKWARD = "genjax_packed_causal_attention_backward"
LAYER_NORM_FORWARD = "genjax_layer_norm_forward"
LAYER_NORM_BACKWARD = "genjax_layer_norm_backward"
BIAS_GELU_FORWARD = "genjax_bias_gelu_forward"
BIAS_GELU_BACKWARD = "genjax_bias_gelu_backward"


def _attention_kernel_takes(x: jax.Array) -> bool:
    # The kernel's tile products are written for these only; anything else would
    # index past its buffers.
    return x.dtype == jnp.float32 and x.shape[-1] % 16 == 0 and x.shape[-1] <= 128


def attention_applies(q_BTHK: jax.Array) -> bool:
    """CPU, float32, a head size that is a multiple of 16 up to 128."""
    return jax.default_backend() == "cpu" and _attention_kernel_takes(q_BTHK)


def layer_norm_applies(x: jax.Array) -> bool:
    """CPU and float32 (the LayerNorm and bias-GELU kernels' domain)."""
    return jax.default_backend() == "cpu" and x.dtype == jnp.float32


def _call(target, results, *args, **attrs):
    # broadcast_all: vmapped (ensemble) axes arrive as leading dimensions of every
    # operand; the kernels fold them into the batch (attention) or into per-member
    # groups of rows (LayerNorm's scale and bias).
    attrs = {k: np.float32(v) for k, v in attrs.items()}
    return jax.ffi.ffi_call(target, results, vmap_method="broadcast_all")(*args, **attrs)


def _like(*arrays):
    return tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in arrays)


# ----------------------------------------------------------------------------- attention


def _check_heads(name, x):
    if not _attention_kernel_takes(x):
        raise ValueError(f"{name} has dtype {x.dtype} and head size {x.shape[-1]}; the CPU attention kernel "
                         "takes float32 with a head size that is a multiple of 16 up to 128")


def _attention_forward(q_BTHK, k_BTHK, v_BTHK):
    _check_heads("q", q_BTHK)
    for name, x in (("k", k_BTHK), ("v", v_BTHK)):
        if x.shape != q_BTHK.shape or x.dtype != q_BTHK.dtype:
            raise ValueError(f"{name} is {x.dtype}{list(x.shape)}; expected q's {q_BTHK.dtype}{list(q_BTHK.shape)}")
    *lead, T, H, K = q_BTHK.shape
    lse = jax.ShapeDtypeStruct((*lead, H, T), jnp.float32)
    return _call(ATTENTION_FORWARD, (*_like(q_BTHK), lse), q_BTHK, k_BTHK, v_BTHK, scale=1.0 / np.sqrt(K))


@jax.custom_vjp
def causal_self_attention(q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(K) + causal mask) v for float32 (..., T, H, K) inputs."""
    return _attention_forward(q_BTHK, k_BTHK, v_BTHK)[0]


def _attention_vjp_forward(q_BTHK, k_BTHK, v_BTHK):
    out, lse = _attention_forward(q_BTHK, k_BTHK, v_BTHK)
    return out, (q_BTHK, k_BTHK, v_BTHK, out, lse)


def _attention_vjp_backward(residuals, g_BTHK):
    q_BTHK, k_BTHK, v_BTHK = residuals[:3]
    return tuple(_call(ATTENTION_BACKWARD, _like(q_BTHK, k_BTHK, v_BTHK), *residuals, g_BTHK,
                       scale=1.0 / np.sqrt(q_BTHK.shape[-1])))


causal_self_attention.defvjp(_attention_vjp_forward, _attention_vjp_backward)


def _packed_forward(qkv_BT3HK):
    _check_heads("qkv", qkv_BT3HK)
    if qkv_BT3HK.ndim < 4 or qkv_BT3HK.shape[-3] != 3:
        raise ValueError(f"qkv has shape {qkv_BT3HK.shape}; expected (..., T, 3, H, K)")
    *lead, T, _, H, K = qkv_BT3HK.shape
    out = jax.ShapeDtypeStruct((*lead, T, H, K), jnp.float32)
    lse = jax.ShapeDtypeStruct((*lead, H, T), jnp.float32)
    return _call(PACKED_ATTENTION_FORWARD, (out, lse), qkv_BT3HK, scale=1.0 / np.sqrt(K))


@jax.custom_vjp
def packed_causal_self_attention(qkv_BT3HK: jax.Array) -> jax.Array:
    """`causal_self_attention(q, k, v)` of one (..., T, 3, H, K) projection, read
    and differentiated in place (no slices of q, k, v or concatenated gradients)."""
    return _packed_forward(qkv_BT3HK)[0]


def _packed_vjp_forward(qkv_BT3HK):
    out, lse = _packed_forward(qkv_BT3HK)
    return out, (qkv_BT3HK, out, lse)


def _packed_vjp_backward(residuals, g_BTHK):
    qkv_BT3HK = residuals[0]
    return _call(PACKED_ATTENTION_BACKWARD, _like(qkv_BT3HK), *residuals, g_BTHK,
                 scale=1.0 / np.sqrt(qkv_BT3HK.shape[-1]))


packed_causal_self_attention.defvjp(_packed_vjp_forward, _packed_vjp_backward)


# ----------------------------------------------------------------------------- LayerNorm


def _layer_norm_forward(x, scale, bias, eps):
    for name, p in (("scale", scale), ("bias", bias)):
        if p.shape != x.shape[-1:] or p.dtype != jnp.float32 or x.dtype != jnp.float32:
            raise ValueError(f"{name} is {p.dtype}{list(p.shape)} for x {x.dtype}{list(x.shape)}; "
                             f"the CPU LayerNorm kernel takes float32 x and float32 ({x.shape[-1]},) scale and bias")
    rows = jax.ShapeDtypeStruct(x.shape[:-1], jnp.float32)
    return _call(LAYER_NORM_FORWARD, (*_like(x), rows, rows), x, scale, bias, eps=eps)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis; float32."""
    return _layer_norm(x, scale, bias, float(eps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
    return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_vjp_forward(x, scale, bias, eps):
    y, mean, rstd = _layer_norm_forward(x, scale, bias, eps)
    return y, (x, scale, mean, rstd)


def _layer_norm_vjp_backward(eps, residuals, g):
    del eps  # rstd already holds it
    x, scale = residuals[:2]
    return tuple(_call(LAYER_NORM_BACKWARD, _like(x, scale, scale), *residuals, g))


_layer_norm.defvjp(_layer_norm_vjp_forward, _layer_norm_vjp_backward)


# ----------------------------------------------------------------------------- bias + GELU


def gelu_mlp_applies(x: jax.Array, dtype=jnp.float32) -> bool:
    """CPU, float32 inputs and float32 matmuls."""
    return layer_norm_applies(x) and jnp.dtype(dtype) == jnp.float32


def _check_bias(y, bias):
    if bias.shape != y.shape[-1:] or bias.dtype != jnp.float32 or y.dtype != jnp.float32:
        raise ValueError(f"bias is {bias.dtype}{list(bias.shape)} for y {y.dtype}{list(y.shape)}; the CPU "
                         f"bias-GELU kernel takes float32 y and a float32 ({y.shape[-1]},) bias")


def weight_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """x^T g over all leading axes: the weight gradient of a dense layer x w.

    Autodiff leaves XLA:CPU the product with its contracted (token) axis major
    in x, which it runs on a slower path than its plain products (~1.15-1.4x the
    time here). Transposing x first (the barrier keeps XLA from folding the
    transpose back into the product) makes it a plain product; x is the narrow
    operand, so the copy is small.
    """
    x_2d, g_2d = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    return jnp.dot(jax.lax.optimization_barrier(x_2d.T), g_2d)


@jax.custom_vjp
def gelu_mlp(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, b_out: jax.Array) -> jax.Array:
    """gelu(x w_in + b_in) w_out + b_out, the transformer MLP with the tanh-approximate
    GELU (Hendrycks & Gimpel 2016), float32; x (..., D), w_in (D, F), w_out (F, D).

    The products are XLA's; bias + GELU is one kernel pass each way, where
    XLA:CPU makes two passes forward (it keeps tanh for the backward pass) and
    evaluates tanh slowly; the backward pass recomputes GELU from x w_in. Weight
    gradients go through `weight_gradient`.
    """
    return _gelu_mlp_vjp_forward(x, w_in, b_in, w_out, b_out)[0]


def _gelu_mlp_vjp_forward(x, w_in, b_in, w_out, b_out):
    y = jnp.dot(x, w_in)
    _check_bias(y, b_in)
    h = _call(BIAS_GELU_FORWARD, _like(y), y, b_in)[0]
    return jnp.dot(h, w_out) + b_out, (x, w_in, y, b_in, h, w_out)


def _gelu_mlp_vjp_backward(residuals, g):
    x, w_in, y, b_in, h, w_out = residuals
    # w_out's gradient h^T g as (g^T h)^T: g (width D) is the narrow operand.
    d_w_out = jax.lax.optimization_barrier(weight_gradient(g, h)).T
    dy, d_b_in = _call(BIAS_GELU_BACKWARD, _like(y, b_in), y, b_in, jnp.dot(g, w_out.T))
    d_b_out = jnp.sum(g.reshape(-1, g.shape[-1]), axis=0)
    return jnp.dot(dy, w_in.T), weight_gradient(x, dy), d_b_in, d_w_out, d_b_out


gelu_mlp.defvjp(_gelu_mlp_vjp_forward, _gelu_mlp_vjp_backward)
