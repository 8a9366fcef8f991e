"""Post-training weight-only quantization of a Transformer params tree.

Symmetric absmax quantization (the "absmax quantization" of LLM.int8(), Dettmers
et al. 2022, sec. 2, with vector-wise scales, here one per output channel), and
its group-wise form (a scale per group of consecutive input rows, as in GPTQ,
Frantar et al. 2023, and AWQ, Lin et al. 2024, without their error-compensating
updates or activation-aware scaling: plain round-to-nearest):

  int8, per output channel o:  s_o = max_i |W[i, o]| / 127,
                               q[i, o] = round(W[i, o] / s_o) in [-127, 127]
  int4, per group g of `group_size` consecutive input rows and output channel o:
                               s_go = max_{i in g} |W[i, o]| / 7,
                               q[i, o] = round(W[i, o] / s_go) in [-7, 7]

and W' = s * q. Rounding to the nearest level gives |W - W'| <= s / 2 elementwise.
int4 values are stored one per int8 element (not packed two per byte), so the
arrays in memory take 8 bits per weight; `quantized_bytes` counts 4 bits per
int4 weight, the size a packed file would have.

Kernels are viewed as (inputs, outputs) matrices: the first axis of a 2-D kernel
and of the attention's fused qkv kernel (D, 3, H, K); the first two axes of the
attention output kernel (H, K, D). Biases, LayerNorm parameters and (unless
`embeddings=True`) the token and position embeddings stay float32; those are
quantized per row, over d_model (their "outputs" are the token / position rows).

`Dequantized(net)` wraps a `genjax.nn.transformer.Transformer` so that `apply`,
`extend`, `prefill` and `decode_step` take the quantized tree and dequantize it
inside the caller's jit; float trees pass through unchanged.
"""
import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from genjax.nn.transformer import Transformer

BITS = (4, 8)
LEVELS = {8: 127, 4: 7}  # largest |q|: symmetric ranges [-127, 127] and [-7, 7]
DEFAULT_GROUP_SIZE = 64


@flax.struct.dataclass
class QuantizedArray:
    """A weight W of shape `shape` as ints and scales.

    values: int8 (inputs, outputs), W reshaped to its input x output matrix.
    scales: float32 (1, outputs) for bits=8; (inputs // group_size, outputs) for bits=4.
    """

    values: jax.Array
    scales: jax.Array
    shape: tuple = flax.struct.field(pytree_node=False)
    bits: int = flax.struct.field(pytree_node=False)
    group_size: int = flax.struct.field(pytree_node=False)
    transposed: bool = flax.struct.field(pytree_node=False, default=False)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """scales * values, reshaped to the original weight shape (transposed
        back first for embeddings, which are quantized per row)."""
        n_in, n_out = self.values.shape
        groups = self.scales.shape[0]
        q = self.values.astype(dtype).reshape(groups, n_in // groups, n_out)
        w_IO = (q * self.scales.astype(dtype)[:, None, :]).reshape(n_in, n_out)
        return w_IO.T.reshape(self.shape) if self.transposed else w_IO.reshape(self.shape)


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits={bits!r}; expected one of {BITS}")


def quantize_matrix(w_IO, bits: int = 8, group_size: int = DEFAULT_GROUP_SIZE, *,
                    shape: tuple | None = None, transposed: bool = False) -> QuantizedArray:
    """Absmax-quantizes an (inputs, outputs) matrix: per output channel for bits=8,
    per (group of `group_size` inputs, output channel) for bits=4 (module docstring).
    `shape`: the original weight shape the matrix was reshaped from (default its own);
    `transposed`: the matrix is that weight transposed."""
    _check_bits(bits)
    w_IO = jnp.asarray(w_IO, jnp.float32)
    if w_IO.ndim != 2:
        raise ValueError(f"weight matrix has shape {w_IO.shape}; expected (inputs, outputs)")
    n_in, n_out = w_IO.shape
    if bits == 8:
        group = n_in
    else:
        group = group_size
        if not isinstance(group, (int, np.integer)) or group < 1 or n_in % group:
            raise ValueError(f"group_size={group_size!r} does not divide the input dimension {n_in}; "
                             f"expected a positive divisor of {n_in}")
    levels = LEVELS[bits]
    w_GgO = w_IO.reshape(n_in // group, group, n_out)
    scales_GO = jnp.max(jnp.abs(w_GgO), axis=1) / levels
    safe_GO = jnp.where(scales_GO > 0, scales_GO, 1.0)  # all-zero columns: q = 0
    q = jnp.clip(jnp.round(w_GgO / safe_GO[:, None, :]), -levels, levels)
    return QuantizedArray(values=q.astype(jnp.int8).reshape(n_in, n_out), scales=scales_GO,
                          shape=tuple(shape or w_IO.shape), bits=bits, group_size=int(group),
                          transposed=transposed)


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def _input_axes(path: tuple, leaf) -> int | None:
    """How many leading axes of a Transformer parameter are its inputs, or None
    for parameters that stay float (biases, LayerNorms, embeddings)."""
    names = [_key(p) for p in path]
    if names[-1] == "kernel":
        return 2 if len(names) >= 2 and names[-2] == "out" and leaf.ndim == 3 else 1
    if names[-1] == "unembed":
        return 1
    return None


def quantize(params, bits: int = 8, group_size: int = DEFAULT_GROUP_SIZE, *, embeddings: bool = False):
    """The Transformer params tree with every dense kernel (the attention qkv and
    output projections, the MLP fc and proj, the unembedding) replaced by a
    `QuantizedArray`; with `embeddings=True` also the token and position
    embeddings (per row). Other leaves are kept as they are."""
    _check_bits(bits)

    def one(path, leaf):
        axes = _input_axes(path, leaf)
        if axes is None and embeddings and _key(path[-1]) in ("embed", "pos_embed"):
            # Rows are tokens / positions: quantize each row over d_model.
            return quantize_matrix(jnp.asarray(leaf).T, bits, group_size, shape=tuple(leaf.shape),
                                   transposed=True)
        if axes is None:
            return leaf
        shape = tuple(leaf.shape)
        n_in = int(np.prod(shape[:axes]))
        return quantize_matrix(jnp.reshape(leaf, (n_in, -1)), bits, group_size, shape=shape)

    return jax.tree_util.tree_map_with_path(one, params)


def _is_quantized(x) -> bool:
    return isinstance(x, QuantizedArray)


def dequantize(params, dtype=jnp.float32):
    """Float params from a tree made by `quantize` (float leaves pass through)."""
    return jax.tree_util.tree_map(lambda x: x.dequantize(dtype) if _is_quantized(x) else x,
                                  params, is_leaf=_is_quantized)


def quantized_bytes(params) -> int:
    """Bytes of a (possibly quantized) params tree: int8 values 1 byte, int4 values
    half a byte (as packed two per byte), scales and float leaves their itemsize."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(params, is_leaf=_is_quantized):
        if _is_quantized(leaf):
            total += leaf.values.size * leaf.bits // 8 + leaf.scales.size * leaf.scales.dtype.itemsize
        else:
            total += leaf.size * leaf.dtype.itemsize
    return int(total)


@dataclasses.dataclass(frozen=True)
class Dequantized:
    """A Transformer whose params may be a `quantize`d tree: `apply`, `extend`,
    `prefill`, `decode_step` dequantize it (inside the caller's jit) and run the
    float model; every other attribute is the wrapped net's. Hashable, so it
    serves as a static jit argument like the net itself (e.g. `decode.generate`,
    `coding.code_batch`)."""

    net: Transformer

    def __getattr__(self, name):
        if name == "net" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.net, name)

    def apply(self, variables, *args, **kwargs):
        variables = dict(variables)
        variables["params"] = dequantize(variables["params"])
        return self.net.apply(variables, *args, **kwargs)

    def init_cache(self, batch: int, dtype: Any = None):
        return self.net.init_cache(batch, dtype)

    # Transformer's plain helpers, calling this wrapper's `apply`.
    extend = Transformer.extend
    prefill = Transformer.prefill
    decode_step = Transformer.decode_step
