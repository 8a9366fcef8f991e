"""Images: model space <-> integer levels, deterministic epoch batching, grids (pure).

Model space is [-1, 1]: integer images x in {0..L-1} are uniformly dequantized
to y = -1 + 2 (x + u) / L, u ~ U[0, 1)^D (Theis et al. 2016; Ho et al. 2019,
eq. 1), so a density on y bounds the discrete NLL of x (see
genjax.diffusion.likelihood.discrete_nll). Reading files is the glue's job
(experiments/datasets.py).
"""
import math

import jax
import jax.numpy as jnp

from genjax.diffusion.likelihood import uniform_dequantize

LOW, HIGH = -1.0, 1.0


def to_levels(y, num_levels: int):
    """Model space back to integer levels: floor((y + 1) L / 2), clipped to 0..L-1 (int32).

    For plotting and classifying samples; values outside [-1, 1] go to the end levels.
    """
    levels = jnp.floor((jnp.asarray(y, jnp.float32) - LOW) * (num_levels / (HIGH - LOW)))
    return jnp.clip(levels, 0, num_levels - 1).astype(jnp.int32)


def level_centres(x_int, num_levels: int):
    """Integer levels x -> their cells' centres in model space, -1 + (2 x + 1) / L
    (float32): where `to_levels` maps back exactly."""
    return LOW + (jnp.asarray(x_int).astype(jnp.float32) + 0.5) * ((HIGH - LOW) / num_levels)


def log_cell_volume(data_shape, num_levels: int) -> float:
    """D log(2 / L): the log-volume of one data cell in model space (D = size of one
    example), the term between a density on [-1, 1]^D and the discrete NLL."""
    return math.prod(data_shape) * math.log((HIGH - LOW) / num_levels)


def to_model_space(key, x_int, num_levels: int):
    """Uniform dequantization of integer images (leading batch axis) into [-1, 1].

    Returns (y float32, log_bin_volume) with log_bin_volume = D log(2 / L), the
    log-volume of one data cell in model space (D = size of one example).
    A value whose float32 rounding lands on a neighbouring cell (u within a few
    ulps of 0 or 1, probability ~1e-6 per value) is moved to its cell's centre, so
    `to_levels(y, L) == x` holds exactly.
    """
    x = jnp.asarray(x_int)
    if x.ndim < 1:
        raise ValueError(f"x_int must have a leading batch axis; got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"x_int must hold integer levels; got dtype {x.dtype}")
    y, log_bin_volume = uniform_dequantize(key, x.astype(jnp.float32), num_levels, LOW, HIGH)
    y = y.astype(jnp.float32)
    y = jnp.where(to_levels(y, num_levels) == x, y, level_centres(x, num_levels))
    return y, log_bin_volume


def epoch_batch_indices(data_key, step, num_examples: int, batch_size: int):
    """Indices (batch_size,) of the examples in training step `step`.

    Epoch e = step // K (K = num_examples // batch_size batches per epoch, the
    remainder dropped) is the permutation from fold_in(data_key, e); batch j = step % K
    is its j-th contiguous slice. A function of (key, step) only, so a resumed run
    sees the data an uninterrupted one would. Jittable; `step` may be traced.
    """
    per_epoch = num_examples // batch_size
    step = jnp.asarray(step)
    epoch, j = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(perm, j * batch_size, batch_size)


def array_batch_fn(arrays, batch_size: int):
    """batch_fn(data_key, step) -> the pytree `arrays` (leading axis N) at
    `epoch_batch_indices(data_key, step, N, batch_size)`.

    Called eagerly it jit-compiles only the index computation and gathers from
    the device arrays. Traced inside another jit, the arrays become constants of
    that program: fine for small data; for large data gather outside, or pass the
    arrays in and use `epoch_batch_indices`.
    """
    leaves = jax.tree.leaves(arrays)
    if not leaves:
        raise ValueError("arrays must contain at least one array")
    sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"all arrays need the same leading axis; got leading sizes {sorted(map(str, sizes))}")
    (num_examples,) = sizes
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}] (the number of examples); got {batch_size}")
    arrays = jax.tree.map(jnp.asarray, arrays)
    indices = jax.jit(epoch_batch_indices, static_argnums=(2, 3))

    def batch_fn(data_key, step):
        idx_B = indices(data_key, step, num_examples, batch_size)
        return jax.tree.map(lambda a: jnp.take(a, idx_B, axis=0), arrays)

    return batch_fn


def image_grid(images_NHWC, nrow: int, pad_value=0):
    """Tiles N images, `nrow` per row, into one (H', W', C) array with 1-pixel borders.

    H' = R (H + 1) + 1, W' = nrow (W + 1) + 1 with R = ceil(N / nrow); empty cells
    and borders hold `pad_value`. Keeps the dtype.
    """
    images_NHWC = jnp.asarray(images_NHWC)
    if images_NHWC.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C); got shape {images_NHWC.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1; got {nrow}")
    N, H, W, C = images_NHWC.shape
    rows = math.ceil(N / nrow)
    blank = jnp.full((rows * nrow - N, H, W, C), pad_value, images_NHWC.dtype)
    cells = jnp.concatenate([images_NHWC, blank], axis=0)
    cells = jnp.pad(cells, ((0, 0), (1, 0), (1, 0), (0, 0)), constant_values=pad_value)
    grid = cells.reshape(rows, nrow, H + 1, W + 1, C).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * (H + 1), nrow * (W + 1), C)
    return jnp.pad(grid, ((0, 1), (0, 1), (0, 0)), constant_values=pad_value)
