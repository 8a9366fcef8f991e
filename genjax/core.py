"""The model protocol shared by every family (see DESIGN.md).

Each family replaces the intractable density p(x) with something learnable and
exposes it through the same four pure functions, so one trainer, one ensemble
driver, one checkpoint format and one evaluation loop serve all of them.
"""
import operator
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

PyTree = Any


class Model(NamedTuple):
    """A generative model as a bundle of pure functions.

    init:     (key, example_batch) -> params
    loss:     (params, key, batch) -> (scalar, metrics dict)
    sample:   (params, key, num, **cond) -> samples
    log_prob: (params, key, batch) -> per-example log-likelihood in nats, or None
              (the family then reports sample metrics only). Each family's
              docstring says whether it is exact or a bound.

    Optional fields, ignored by the single-loss families (docs/protocol.md):
    init_model_state: (key, example_batch) -> state that is not optimized (a
              replay buffer, BatchNorm statistics, spectral-norm vectors, an EMA
              codebook). The loss then reads and returns it:
              loss(params, key, batch, model_state) -> (scalar, (metrics, model_state)),
              and sample / log_prob take it as the keyword `model_state`.
    update_schedule: with `loss` a dict {group: loss} over params that are a dict of
              the same groups, the updates of one train step, e.g.
              (("critic", 5), ("generator", 1)); None: each group once, in order.
    ema_groups: the groups whose parameter EMA is kept (None: all); the others'
              "EMA" parameters equal their current parameters.
    """

    init: Callable[..., PyTree]
    loss: Callable[..., tuple[jax.Array, dict]] | Mapping[str, Callable]
    sample: Callable[..., Any]
    log_prob: Optional[Callable[..., jax.Array]] = None
    init_model_state: Optional[Callable[..., PyTree]] = None
    update_schedule: Optional[tuple[tuple[str, int], ...]] = None
    ema_groups: Optional[tuple[str, ...]] = None

    @property
    def groups(self) -> tuple[str, ...]:
        """The parameter groups, in update order; () for one loss over all parameters."""
        if not isinstance(self.loss, Mapping):
            return ()
        return tuple(dict.fromkeys(g for g, _ in self.update_schedule)) if self.update_schedule else tuple(self.loss)


def bits_per_dim(nats_per_example: jax.Array, num_dims: int) -> jax.Array:
    """Converts nats per example to bits per dimension: nats / (D ln 2)."""
    return nats_per_example / (num_dims * jnp.log(2.0))


def check_shape(name: str, array: jax.Array, expected: tuple) -> None:
    """Raises a ValueError naming `name` when `array.shape` does not match.

    `expected` may hold None for a free dimension (usually the batch).
    """
    shape = tuple(array.shape)
    ok = len(shape) == len(expected) and all(
        e is None or e == s for s, e in zip(shape, expected)
    )
    if not ok:
        pretty = tuple("N" if e is None else e for e in expected)
        raise ValueError(f"{name} has shape {shape}; expected {pretty}")


def check_int(name: str, value, minimum: int = 0) -> int:
    """`value` as a concrete Python int >= minimum (counts fix static shapes and loop
    lengths, so a traced or fractional value is an error that names it)."""
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {n}")
    return n



def interp(x: jax.Array, xp: jax.Array, fp: jax.Array) -> jax.Array:
    """`jnp.interp(x, xp, fp)` (xp increasing; constant beyond the ends) without a loop.

    `jnp.interp` finds the interval with `jnp.searchsorted`, whose default is a
    while loop; nested in a `lax.scan` on a GPU, XLA (JAX 0.11) failed at run time
    ("Failed to evaluate instruction ... depends on ... parameters to its parent
    computation"). The unrolled binary search has no loop and costs log2(len(xp))
    comparisons per element.
    """
    n = xp.shape[0]
    i = jnp.clip(jnp.searchsorted(xp, x, side="right", method="scan_unrolled"), 1, n - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    dx = x1 - x0
    w = jnp.where(dx == 0, 0.0, (x - x0) / jnp.where(dx == 0, 1.0, dx))
    inside = f0 + w * (f1 - f0)
    return jnp.where(x <= xp[0], fp[0], jnp.where(x >= xp[n - 1], fp[n - 1], inside))


def unconditional_batch(family: str, batch, data_shape: tuple):
    """`batch` itself when it is an array of examples (N, *data_shape); otherwise a
    ValueError naming the family, the expected shape and what came (a dict of
    images and labels goes to a family that takes no labels)."""
    if not hasattr(batch, "shape"):
        raise ValueError(f"a {family} batch is an array of shape (N, {', '.join(map(str, data_shape))}) "
                         f"(unconditional); got {type(batch).__name__}")
    check_shape("batch", batch, (None,) + tuple(data_shape))
    return batch
