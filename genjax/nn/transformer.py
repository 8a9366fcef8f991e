"""A GPT-style decoder-only transformer with an explicit KV cache.

Architecture (Radford et al. 2019, "GPT-2"; as in nanoGPT / nanodo): token
embedding, learned or rotary positions (Su et al. 2021, "RoFormer", eq. 34),
pre-LayerNorm blocks of causal multi-head self-attention (Vaswani et al. 2017,
eq. 1) and a GELU MLP (tanh approximation, Hendrycks & Gimpel 2016), a final
LayerNorm and a (optionally tied, Press & Wolf 2017) unembedding.

Mixed precision: parameters and the residual stream are float32; with
`dtype=jnp.bfloat16` the matmuls take bfloat16 inputs, while attention scores,
the softmax and the output logits are float32.

Dropout (rate `dropout`) acts on the embedding sum and on each residual branch
output. Attention weights get no dropout, so the einsum attention and
`jax.nn.dot_product_attention` compute the same function.

Decoding uses a pure cache pytree `KVCache(k, v)`, each of shape
(layers, batch, max_len, heads, head_dim). Feeding T tokens at position `pos`
writes their keys/values at [pos, pos + T) and lets each query attend to every
cached position up to its own; entries beyond are masked, so stale entries
left by rejected speculative drafts are harmless.
"""
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genjax.nn.dropout import Dropout
from genjax.nn import cpu_kernels
from genjax.nn.moe import MoEMLP

_POSITIONS = ("learned", "rotary")
MOE_COLLECTION = "moe_aux"

_ATTENTION = ("auto", "blocked", "einsum", "dpa", "xla", "cudnn", "cpu_kernel")


class KVCache(NamedTuple):
    """Keys and values of every layer, (layers, batch, max_len, heads, head_dim)."""

    k: jax.Array
    v: jax.Array


def rotary(x_BTHK: jax.Array, pos_T: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, eq. 34), half-split pairing.

    Channel i of the first half and channel i of the second half form a pair
    rotated by angle pos * base^(-2i/K); computed in float32.
    """
    half = x_BTHK.shape[-1] // 2
    freqs_K = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_TK = pos_T.astype(jnp.float32)[:, None] * freqs_K[None, :]
    cos = jnp.cos(angle_TK)[None, :, None, :]
    sin = jnp.sin(angle_TK)[None, :, None, :]
    x = x_BTHK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHK.dtype)


def _on_nvidia_gpu() -> bool:
    return jax.default_backend() == "gpu" and jax.devices()[0].device_kind.upper().startswith("NVIDIA")


def cudnn_attention_applies(q_BTHK: jax.Array) -> bool:
    """Whether cuDNN's fused flash attention takes these queries: an NVIDIA GPU,
    16-bit inputs and a head size that is a multiple of 8 up to 128."""
    head = q_BTHK.shape[-1]
    return (_on_nvidia_gpu() and q_BTHK.dtype in (jnp.bfloat16, jnp.float16)
            and head % 8 == 0 and head <= 128)


def _resolve(implementation: str, q_BTHK: jax.Array | None = None) -> str:
    """'auto' -> 'blocked' on CPU; 'cudnn' where `cudnn_attention_applies(q_BTHK)`;
    'dpa' (jax.nn.dot_product_attention with JAX's choice) elsewhere.

    JAX's own choice (implementation=None) is XLA's unfused attention even where
    cuDNN applies; on an H100 the bf16 12 x 768 LM at context 1024 trains 2.1x
    faster with cuDNN (docs/RESULTS.md).
    """
    if implementation == "auto":
        if jax.default_backend() == "cpu":
            return "blocked"
        return "cudnn" if q_BTHK is not None and cudnn_attention_applies(q_BTHK) else "dpa"
    if implementation not in _ATTENTION:
        raise ValueError(f"attention implementation={implementation!r}; expected one of {_ATTENTION}")
    return implementation


def _masked_softmax_attention(q_BHTK, k_BHSK, v_BHSK, mask_TS):
    scores_BHTS = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_BHSK, preferred_element_type=jnp.float32)
    scores_BHTS = jnp.where(mask_TS, scores_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1).astype(v_BHSK.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", probs_BHTS, v_BHSK)


def causal_attention(
    q_BTHK: jax.Array,
    k_BSHK: jax.Array,
    v_BSHK: jax.Array,
    q_pos_T: jax.Array,
    *,
    implementation: str = "einsum",
) -> jax.Array:
    """softmax(q k^T / sqrt(K) + mask) v (Vaswani et al. 2017, eq. 1).

    Key j sits at position j; query t at position q_pos_T[t] sees keys j <= q_pos_T[t]
    (q_pos_T may be traced: this is the KV-cache path).
    implementation: "einsum" / "blocked" / "auto" on CPU (plain einsum + mask), or
    "xla" / "cudnn" / "dpa" / "auto" elsewhere for `jax.nn.dot_product_attention`
    with that backend (None = JAX's choice for "dpa").
    Scores and softmax are float32 whatever the input dtype.
    """
    impl = _resolve(implementation)
    S = k_BSHK.shape[1]
    mask_TS = jnp.arange(S)[None, :] <= q_pos_T[:, None]
    if impl in ("einsum", "blocked"):
        scale = 1.0 / np.sqrt(q_BTHK.shape[-1])
        q_BHTK = (q_BTHK * scale).transpose(0, 2, 1, 3)
        out_BHTK = _masked_softmax_attention(
            q_BHTK, k_BSHK.transpose(0, 2, 1, 3), v_BSHK.transpose(0, 2, 1, 3), mask_TS
        )
        return out_BHTK.transpose(0, 2, 1, 3)
    return jax.nn.dot_product_attention(
        q_BTHK, k_BSHK, v_BSHK, mask=mask_TS[None, None],
        implementation=None if impl == "dpa" else impl,
    )


def causal_self_attention(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHK: jax.Array,
    *,
    implementation: str = "auto",
    block_size: int = 64,
) -> jax.Array:
    """Causal self-attention of T tokens at positions 0..T-1 (the training path).

    Same function as `causal_attention` with q_pos_T = arange(T), computed as:
      "blocked" (the CPU default): queries in blocks of `block_size`; block i
        attends only to keys [0, end of block i), so the all-masked upper
        triangle of the score matrix is never formed: about (1 + 1/n) / 2 of the
        full matmul and softmax work for n blocks. On XLA:CPU the softmax passes
        over the (T, T) scores, not the matmuls, dominate plain masked attention.
      "einsum": one masked (T, T) softmax.
      "xla" / "cudnn" / "dpa": `jax.nn.dot_product_attention(is_causal=True)`
        (cuDNN's fused flash-attention kernel on GPUs; "dpa" lets JAX choose).
      "auto": "blocked" on CPU, "cudnn" for 16-bit inputs on NVIDIA GPUs
        (`cudnn_attention_applies`), "dpa" otherwise.
      "cpu_kernel": the fused FlashAttention-2 CPU kernel (genjax.nn.cpu_kernels;
        its FFI targets registered by experiments.cpu_kernels), "blocked" where
        the kernel does not apply.
    """
    impl = _resolve(implementation, q_BTHK)
    T = q_BTHK.shape[1]
    if impl == "cpu_kernel":
        if cpu_kernels.attention_applies(q_BTHK):
            return cpu_kernels.causal_self_attention(q_BTHK, k_BTHK, v_BTHK)
        impl = "blocked"
    if impl in ("xla", "cudnn", "dpa"):
        return jax.nn.dot_product_attention(
            q_BTHK, k_BTHK, v_BTHK, is_causal=True, implementation=None if impl == "dpa" else impl
        )
    if impl == "einsum":
        return causal_attention(q_BTHK, k_BTHK, v_BTHK, jnp.arange(T), implementation="einsum")
    if block_size < 1:
        raise ValueError(f"block_size={block_size}; expected a positive integer")
    scale = 1.0 / np.sqrt(q_BTHK.shape[-1])
    q_BHTK = (q_BTHK * scale).transpose(0, 2, 1, 3)
    k_BHTK = k_BTHK.transpose(0, 2, 1, 3)
    v_BHTK = v_BTHK.transpose(0, 2, 1, 3)
    outs = []
    for start in range(0, T, block_size):
        end = min(start + block_size, T)
        # Static shapes: query rows [start, end) against key columns [0, end).
        mask_CS = np.arange(end)[None, :] <= np.arange(start, end)[:, None]
        outs.append(_masked_softmax_attention(
            q_BHTK[:, :, start:end], k_BHTK[:, :, :end], v_BHTK[:, :, :end], mask_CS
        ))
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)


class _Attention(nn.Module):
    num_heads: int
    num_layers: int
    positions: str
    implementation: str
    rope_base: float
    dtype: Any

    @nn.compact
    def __call__(self, x_BTD, pos_T, kv=None, write_pos=None):
        B, T, D = x_BTD.shape
        H, K = self.num_heads, D // self.num_heads
        init = nn.initializers.normal(0.02)
        qkv = nn.DenseGeneral((3, H, K), dtype=self.dtype, kernel_init=init, name="qkv")(x_BTD)
        if (kv is None and self.positions == "learned" and self.implementation == "cpu_kernel"
                and cpu_kernels.attention_applies(qkv)):
            # The kernel reads q, k, v from the projection itself: no slices are copied.
            out_BTHK, new_kv = cpu_kernels.packed_causal_self_attention(qkv), None
        else:
            out_BTHK, new_kv = self._attend(qkv, pos_T, kv, write_pos)
        # GPT-2 scales residual-branch outputs by 1/sqrt(2 * layers) at init.
        out_init = nn.initializers.normal(0.02 / np.sqrt(2 * self.num_layers))
        y_BTD = nn.DenseGeneral(D, axis=(-2, -1), dtype=self.dtype, kernel_init=out_init, name="out")(out_BTHK)
        return y_BTD, new_kv

    def _attend(self, qkv, pos_T, kv, write_pos):
        q_BTHK, k_BTHK, v_BTHK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.positions == "rotary":
            q_BTHK = rotary(q_BTHK, pos_T, self.rope_base)
            k_BTHK = rotary(k_BTHK, pos_T, self.rope_base)
        if kv is None:
            # Positions 0..T-1: the plain causal flag, which fused kernels take.
            return causal_self_attention(q_BTHK, k_BTHK, v_BTHK, implementation=self.implementation), None
        k_cache, v_cache = kv
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k_BTHK.astype(k_cache.dtype), write_pos, 1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v_BTHK.astype(v_cache.dtype), write_pos, 1)
        # The cached path masks by position, which cuDNN's flag cannot express.
        impl = _resolve(self.implementation)
        impl = {"cudnn": "xla", "dpa": "xla", "cpu_kernel": "einsum"}.get(impl, impl)
        out_BTHK = causal_attention(
            q_BTHK, k_cache.astype(q_BTHK.dtype), v_cache.astype(q_BTHK.dtype), pos_T, implementation=impl,
        )
        return out_BTHK, (k_cache, v_cache)


_LAYER_NORM = ("xla", "cpu_kernel")
_GELU = ("xla", "cpu_kernel")


class FusedLayerNorm(nn.Module):
    """flax's `nn.LayerNorm` (epsilon 1e-6; params "scale" and "bias", so checkpoints
    are interchangeable) through the fused CPU kernel (`genjax.nn.cpu_kernels`),
    or through XLA where the kernel does not apply."""

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        D = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (D,))
        bias = self.param("bias", nn.initializers.zeros, (D,))
        if cpu_kernels.layer_norm_applies(x):
            return cpu_kernels.layer_norm(x, scale, bias, self.epsilon)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class _DenseParams(nn.Module):
    """The kernel and bias of an `nn.Dense` (same names, shapes and initializers),
    for code that applies them itself."""

    features: int
    kernel_init: Any

    @nn.compact
    def __call__(self, in_features):
        return (self.param("kernel", self.kernel_init, (in_features, self.features)),
                self.param("bias", nn.initializers.zeros, (self.features,)))


def _layer_norm(implementation: str, name: str | None = None) -> nn.Module:
    return FusedLayerNorm(name=name) if implementation == "cpu_kernel" else nn.LayerNorm(name=name)


class _Block(nn.Module):
    num_heads: int
    num_layers: int
    d_ff: int
    dropout: float
    positions: str
    implementation: str
    rope_base: float
    dtype: Any
    gelu_approximate: bool = True
    layer_norm: str = "xla"
    gelu: str = "xla"
    num_experts: int = 0
    experts_per_token: int = 2
    expert_capacity_factor: float = 1.25
    expert_dropless: bool = False

    @nn.compact
    def __call__(self, x_BTD, pos_T, kv=None, write_pos=None, deterministic=True):
        D = x_BTD.shape[-1]
        attn = _Attention(
            self.num_heads, self.num_layers, self.positions, self.implementation,
            self.rope_base, self.dtype, name="attn",
        )
        h_BTD, new_kv = attn(_layer_norm(self.layer_norm, "ln1")(x_BTD), pos_T, kv, write_pos)
        x_BTD = x_BTD + Dropout(self.dropout)(h_BTD, deterministic=deterministic)
        init = nn.initializers.normal(0.02)
        out_init = nn.initializers.normal(0.02 / np.sqrt(2 * self.num_layers))
        x_ln_BTD = _layer_norm(self.layer_norm, "ln2")(x_BTD)
        if self.num_experts:
            h_BTD, aux = MoEMLP(
                self.num_experts, self.experts_per_token, self.d_ff,
                capacity_factor=self.expert_capacity_factor, dropless=self.expert_dropless,
                gelu_approximate=self.gelu_approximate, dtype=self.dtype,
                kernel_init=init, out_init=out_init, name="moe",
            )(x_ln_BTD)
            for name, value in aux.items():
                self.sow(MOE_COLLECTION, name, value)
        elif self.gelu == "cpu_kernel" and self.gelu_approximate and cpu_kernels.gelu_mlp_applies(x_ln_BTD, self.dtype):
            # The same parameters as the Dense layers below, through the fused kernel.
            fc = _DenseParams(self.d_ff, init, name="fc")(D)
            proj = _DenseParams(D, out_init, name="proj")(self.d_ff)
            h_BTD = cpu_kernels.gelu_mlp(x_ln_BTD, *fc, *proj)
        else:
            h_BTF = nn.Dense(self.d_ff, dtype=self.dtype, kernel_init=init, name="fc")(x_ln_BTD)
            h_BTF = jax.nn.gelu(h_BTF, approximate=self.gelu_approximate)
            h_BTD = nn.Dense(D, dtype=self.dtype, kernel_init=out_init, name="proj")(h_BTF)
        x_BTD = x_BTD + Dropout(self.dropout)(h_BTD, deterministic=deterministic)
        return x_BTD, new_kv


class Transformer(nn.Module):
    """Decoder-only transformer: tokens_BT -> next-token logits_BTV (float32).

    Attributes:
      vocab_size, num_layers, d_model, num_heads: the usual sizes; d_model must be
        a multiple of num_heads.
      d_ff: MLP width (default 4 * d_model).
      max_len: longest context (size of the learned position table and the cache).
      dropout: dropout rate on the embeddings and residual branches (may be traced:
        `genjax.nn.dropout.Dropout`).
      positions: "learned" (GPT-2) or "rotary" (RoFormer).
      tie_embeddings: share the token embedding with the unembedding.
      dtype: matmul input dtype (float32 or bfloat16).
      attention: "auto" (default: blocked causal softmax on CPU, cuDNN's fused
        kernel for bfloat16 on NVIDIA GPUs, `jax.nn.dot_product_attention`'s
        choice otherwise), "blocked", "einsum", "dpa",
        "xla", "cudnn" or "cpu_kernel" (see `causal_self_attention`; the KV-cache path uses
        `causal_attention`).
      gelu_approximate: tanh-approximate GELU (default, cheaper on CPU) or the
        exact erf form.
      rope_base: rotary frequency base.
      layer_norm: "xla" (flax's nn.LayerNorm) or "cpu_kernel" (`FusedLayerNorm`,
        the same function and parameters through the fused CPU kernel).
      gelu: "xla" (nn.Dense, GELU, nn.Dense) or "cpu_kernel": the same MLP and
        parameters through `genjax.nn.cpu_kernels.gelu_mlp` (fused bias + tanh
        GELU, weight gradients as plain products) where it applies (float32 on
        a CPU, tanh GELU); XLA's otherwise.
      num_experts: 0 (default) for the dense MLP; E > 0 replaces every block's
        MLP by a routed `genjax.nn.moe.MoEMLP` of E experts of width d_ff (its
        parameters under "moe" instead of "fc"/"proj"). Each block sows its
        auxiliary outputs (load-balancing and z losses, load per expert,
        dropped fraction) into the MOE_COLLECTION collection; apply with
        `mutable=[MOE_COLLECTION]` to read them (`make_lm` adds the losses).
      experts_per_token: k of the top-k routing (used when num_experts > 0).
      expert_capacity_factor: capacity factor of the MoE layers; the capacity
        counts the tokens of one call, so decoding one token at a time routes
        differently from a full forward unless `expert_dropless`.
      expert_dropless: the dropless MoE path (`jax.lax.ragged_dot`).

    Apply methods: `__call__` (training / full forward) and `cached_call`
    (feeds tokens into a KVCache). The plain methods `init_cache`, `prefill`,
    `extend` and `decode_step` wrap `cached_call` for decoding with a
    params dict (the 'params' collection).
    """

    vocab_size: int
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    d_ff: int | None = None
    max_len: int = 256
    dropout: float = 0.0
    positions: str = "learned"
    tie_embeddings: bool = False
    dtype: Any = jnp.float32
    attention: str = "auto"
    rope_base: float = 10_000.0
    gelu_approximate: bool = True
    layer_norm: str = "xla"
    gelu: str = "xla"
    num_experts: int = 0
    experts_per_token: int = 2
    expert_capacity_factor: float = 1.25
    expert_dropless: bool = False

    def setup(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of num_heads={self.num_heads}")
        if self.positions not in _POSITIONS:
            raise ValueError(f"positions={self.positions!r}; expected one of {_POSITIONS}")
        if self.attention not in _ATTENTION:
            raise ValueError(f"attention={self.attention!r}; expected one of {_ATTENTION}")
        if self.layer_norm not in _LAYER_NORM:
            raise ValueError(f"layer_norm={self.layer_norm!r}; expected one of {_LAYER_NORM}")
        if self.gelu not in _GELU:
            raise ValueError(f"gelu={self.gelu!r}; expected one of {_GELU}")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"experts_per_token={self.experts_per_token} must be between 1 and "
                             f"num_experts={self.num_experts}")
        if self.positions == "rotary" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"rotary positions need an even head_dim; got {self.d_model // self.num_heads}")
        init = nn.initializers.normal(0.02)
        self.embed = self.param("embed", init, (self.vocab_size, self.d_model))
        if self.positions == "learned":
            self.pos_embed = self.param("pos_embed", init, (self.max_len, self.d_model))
        if not self.tie_embeddings:
            self.unembed = self.param("unembed", init, (self.d_model, self.vocab_size))
        self.blocks = [
            _Block(
                self.num_heads, self.num_layers, self.d_ff or 4 * self.d_model, self.dropout,
                self.positions, self.attention, self.rope_base, self.dtype, self.gelu_approximate,
                self.layer_norm, self.gelu, self.num_experts, self.experts_per_token,
                self.expert_capacity_factor, self.expert_dropless, name=f"block_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.ln_f = _layer_norm(self.layer_norm)
        self.drop = Dropout(self.dropout)

    def _forward(self, tokens_BT, pos, cache, deterministic):
        T = tokens_BT.shape[1]
        pos_T = pos + jnp.arange(T)
        x_BTD = jnp.take(self.embed, tokens_BT, axis=0)
        if self.positions == "learned":
            x_BTD = x_BTD + jax.lax.dynamic_slice_in_dim(self.pos_embed, pos, T)[None]
        x_BTD = self.drop(x_BTD, deterministic=deterministic)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x_BTD, new_kv = block(x_BTD, pos_T, kv, pos, deterministic)
            if cache is not None:
                ks.append(new_kv[0])
                vs.append(new_kv[1])
        h_BTD = self.ln_f(x_BTD).astype(self.dtype)
        w_DV = self.embed.T if self.tie_embeddings else self.unembed
        logits_BTV = jnp.einsum(
            "btd,dv->btv", h_BTD, w_DV.astype(self.dtype), preferred_element_type=jnp.float32
        )
        new_cache = None if cache is None else KVCache(jnp.stack(ks), jnp.stack(vs))
        return logits_BTV, new_cache

    def __call__(self, tokens_BT, *, deterministic: bool = True):
        """Full causal forward pass: logits_BTV[:, t] predicts tokens_BT[:, t + 1]."""
        if tokens_BT.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens_BT.shape[1]} exceeds max_len={self.max_len}")
        return self._forward(tokens_BT, 0, None, deterministic)[0]

    def cached_call(self, tokens_BT, cache: KVCache, pos):
        """Feeds tokens_BT at positions [pos, pos + T); returns (logits_BTV, new cache).

        `pos` may be traced; the caller keeps pos + T <= max_len.
        """
        if tokens_BT.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens_BT.shape[1]} exceeds max_len={self.max_len}")
        return self._forward(tokens_BT, pos, cache, True)

    # Plain (unwrapped) helpers: pure functions of an explicit params dict.

    @nn.nowrap
    def init_cache(self, batch: int, dtype: Any = None) -> KVCache:
        """An all-zero cache for `batch` sequences (dtype defaults to the matmul dtype)."""
        shape = (self.num_layers, batch, self.max_len, self.num_heads, self.d_model // self.num_heads)
        zeros = jnp.zeros(shape, dtype or self.dtype)
        return KVCache(zeros, zeros)

    @nn.nowrap
    def extend(self, params, cache: KVCache, tokens_BT, pos):
        """(logits_BTV, cache) after feeding tokens_BT at positions [pos, pos + T)."""
        return self.apply({"params": params}, tokens_BT, cache, pos, method=Transformer.cached_call)

    @nn.nowrap
    def prefill(self, params, tokens_BT, cache: KVCache | None = None):
        """Feeds a prompt from position 0 into a (fresh by default) cache."""
        if cache is None:
            cache = self.init_cache(tokens_BT.shape[0])
        return self.extend(params, cache, tokens_BT, 0)

    @nn.nowrap
    def decode_step(self, params, cache: KVCache, tokens_B, pos):
        """Feeds one token per sequence at position `pos`: (logits_BV, cache)."""
        logits_B1V, cache = self.extend(params, cache, tokens_B[:, None], pos)
        return logits_B1V[:, 0], cache

    @nn.nowrap
    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count from shapes alone (no initialization is run)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
        return num_params(shapes["params"], non_embedding=non_embedding)

    @nn.nowrap
    def flops_per_token(self, n_ctx: int | None = None) -> int:
        """Training FLOPs per token, Kaplan et al. 2020 Table 1 (see `flops_per_token`)."""
        return flops_per_token(
            self.num_params(non_embedding=True),
            num_layers=self.num_layers,
            d_model=self.d_model,
            n_ctx=self.max_len if n_ctx is None else n_ctx,
        )


_EMBEDDING_NAMES = ("embed", "pos_embed", "unembed")


def num_params(params, *, non_embedding: bool = False) -> int:
    """Number of scalars in a Transformer params tree.

    non_embedding=True drops the token, position and unembedding matrices, which is
    the N of Kaplan et al. 2020 ("excluding all vocabulary and positional embeddings").
    """
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        top = getattr(path[0], "key", None)
        if non_embedding and top in _EMBEDDING_NAMES:
            continue
        total += int(np.prod(leaf.shape))
    return total


def flops_per_token(num_non_embedding_params: int, *, num_layers: int, d_model: int, n_ctx: int) -> int:
    """Training FLOPs per token: C = 6N + 6 n_layer n_ctx d_model.

    Kaplan et al. 2020, Table 1: forward pass 2N + 2 n_layer n_ctx d_attn
    (d_attn = d_model here), and the backward pass costs twice the forward. N is
    the non-embedding parameter count; the attention term is the QK^T and AV
    products, which the 6N term does not include.
    """
    return 6 * num_non_embedding_params + 6 * num_layers * n_ctx * d_model
