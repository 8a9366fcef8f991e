"""The partition function Z = integral of exp(-E(x)) dx by quadrature, for 2-D data.

The model density is normalised on a box B = [low, high]^2 that holds the data:

    p(x) = exp(-E(x)) / Z_B  for x in B (0 outside),   Z_B = integral_B exp(-E(x)) dx,

a proper density whatever E does outside B; the samplers of `genjax.ebm.model`
keep their chains in B too, so training and evaluation see the same law. Z_B is
computed by the midpoint rule on an R x R grid of cells of side h = (high - low)/R:

    log Z_B ~ log sum_ij exp(-E(c_ij)) + 2 log h       (a log-sum-exp, no overflow),

whose error is (h^2 / 24) integral_B laplacian(exp(-E)) + O(h^4) for smooth E
(the composite midpoint rule's error term); comparing
two resolutions measures it (`log_partition` at R and 2R). With B chosen so that
the data's mass outside it is negligible, -E(x) - log Z_B is the log-likelihood
of an honest normalised model, and the held-out NLL is exact up to the
quadrature error.

In D dimensions the grid has R^D points, so quadrature is for D = 2 only
(`quadrature_note` says why for any other shape).
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from genjax.core import check_int


def quadrature_note(data_shape: tuple) -> str | None:
    """None when quadrature of Z applies to data of this shape (2-D points); otherwise
    the reason no quadrature log-likelihood exists for it."""
    shape = tuple(data_shape)
    if shape == (2,):
        return None
    dim = math.prod(shape)
    return (f"no quadrature log-likelihood for data of shape {shape}: Z = integral of exp(-E) is computed "
            f"on a grid of R^D points, feasible for D = 2 only; this data has D = {dim} "
            f"(R = 512 would need 512^{dim} energy evaluations)")


def check_quadrature(data_shape: tuple) -> None:
    """Raises a ValueError naming the shape when quadrature does not apply to it."""
    note = quadrature_note(data_shape)
    if note is not None:
        raise ValueError(note)


def check_box(box) -> tuple[float, float]:
    """`box` = (low, high) with low < high, as floats."""
    try:
        low, high = (float(b) for b in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be a pair (low, high) of numbers, got {box!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"box must be finite with low < high, got {box!r}")
    return low, high


def grid_centres(low: float, high: float, resolution: int) -> tuple[jax.Array, float]:
    """Cell centres (R,) of an R-cell partition of [low, high] and the cell side h."""
    resolution = check_int("resolution", resolution, 1)
    h = (high - low) / resolution
    return low + h * (jnp.arange(resolution, dtype=jnp.float32) + 0.5), h


def energy_grid(energy_fn: Callable, *, box, resolution: int = 512) -> jax.Array:
    """E at the R x R cell centres of box^2, shape (R, R): entry [i, j] is the cell
    (x = c_j, y = c_i), i.e. rows are y (as `plt.imshow(..., origin="lower")` reads).
    Evaluated one row at a time (`lax.map`) to bound memory."""
    low, high = check_box(box)
    c_R, _ = grid_centres(low, high, resolution)

    def row(y):
        return energy_fn(jnp.stack([c_R, jnp.full_like(c_R, y)], axis=1))

    return jax.lax.map(row, c_R)


def log_partition(energy_fn: Callable, *, box, resolution: int = 512) -> jax.Array:
    """log Z_B by the midpoint rule on an R x R grid over the box (module docstring)."""
    low, high = check_box(box)
    _, h = grid_centres(low, high, resolution)
    e_RR = energy_grid(energy_fn, box=box, resolution=resolution)
    return logsumexp(-e_RR) + 2.0 * jnp.log(h)


def in_box(x_N2: jax.Array, low: float, high: float) -> jax.Array:
    """(N,) booleans: each point lies in [low, high]^2."""
    return jnp.all((x_N2 >= low) & (x_N2 <= high), axis=1)


def log_prob(energy_fn: Callable, x_N2: jax.Array, *, box, resolution: int = 512) -> jax.Array:
    """log p(x) = -E(x) - log Z_B inside the box, -inf outside; shape (N,)."""
    low, high = check_box(box)
    log_z = log_partition(energy_fn, box=box, resolution=resolution)
    return jnp.where(in_box(x_N2, low, high), -energy_fn(x_N2) - log_z, -jnp.inf)


def sample_grid(key, energy_fn: Callable, num: int, *, box, resolution: int = 512) -> jax.Array:
    """`num` exact draws from the midpoint-rule discretisation of p: a cell with
    probability exp(-E(c)) h^2 / Z_B, then a uniform point in it. Shape (num, 2).
    Memory: a (num, R) array of logits."""
    num = check_int("num", num, 0)
    low, high = check_box(box)
    _, h = grid_centres(low, high, resolution)
    e_RR = energy_grid(energy_fn, box=box, resolution=resolution)
    k_row, k_col, k_jitter = jax.random.split(key, 3)
    # the row (y) from its marginal, then the column (x) given the row: two categorical
    # draws over R cells each (no float32 running sum over R^2 cells, whose rounding
    # visibly biased an inverse-CDF draw at R = 512)
    i_N = jax.random.categorical(k_row, logsumexp(-e_RR, axis=1), shape=(num,))
    j_N = jax.random.categorical(k_col, -e_RR[i_N], axis=-1)
    corner_N2 = low + h * jnp.stack([j_N, i_N], axis=1).astype(jnp.float32)
    return corner_N2 + h * jax.random.uniform(k_jitter, (num, 2))
