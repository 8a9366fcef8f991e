"""Rectified flow: reflow, straightness and one-step distillation (Liu et al.
2023, "Flow Straight and Fast", sec. 2).

Time convention (that of every module in `genjax.flows`): t = 0 is the standard
normal noise x0, t = 1 is the data x1, and a velocity field `velocity_fn(x, t_N)`
carries one to the other along dx/dt = v(x, t). Every ODE solve goes through
`genjax.integrate` (via `genjax.flows.ode`).

The recipe, with the pieces of this library:

1. a base flow trained by flow matching on independent (noise, data) pairs
   (Liu et al.'s 1-rectified flow; `matching.make_flow_matching_model`);
2. *reflow*: pair fresh noise with the base flow's own ODE solutions
   (`reflow_pairs`) and train again on these fixed pairs
   (`matching.make_flow_matching_model(..., paired=True)`, batches from
   `pairs_batch_fn`), giving the 2-rectified flow. Its pairs no longer cross, so
   its trajectories are straighter (Liu et al. 2023, Thm. 3.6) and few Euler
   steps suffice; `straightness` (along the ODE) and `trajectory_straightness`
   (of saved `euler_trajectories`) measure this;
3. *distillation*: regress the one-step map x1 = x0 + v(x0, 0) on the pairs of a
   rectified flow (`distillation_loss`, `make_distillation_model`), a generator
   that needs one network evaluation.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from genjax import integrate
from genjax.core import Model, check_int
from genjax.flows.bijectors import check_event_shape
from genjax.flows.ode import ode_sample, vector_field


def _check_pairs(what: str, x0, x1):
    if x0.shape != x1.shape:
        raise ValueError(f"{what}: noise x0 has shape {x0.shape} but data x1 has shape {x1.shape}; expected equal")


def one_step(velocity_fn: Callable, x0):
    """The one-step generator x1 = x0 + v(x0, 0): a single Euler step of the
    flow from t = 0 to t = 1 (Liu et al. 2023, sec. 2.3).

    Exact when the flow's trajectories are straight lines at constant speed.
    For the base flow it is poor: v(x0, 0) = E[x1 - x0 | x_0 = x0] = E[x1] - x0
    for independent pairs, so every sample lands on the data mean.
    """
    x1, _ = integrate.solve_ode(vector_field(velocity_fn), x0, 0.0, 1.0, method="euler", num_steps=1)
    return x1


def distillation_loss(velocity_fn: Callable, x0, x1):
    """Per-example one-step distillation loss ||x0 + v(x0, 0) - x1||^2, summed over
    the event dimensions, on pairs (x0, x1) of a (rectified) flow (Liu et al. 2023,
    sec. 2.3: the flow matching objective restricted to t = 0 with the L2 metric).

    Zero exactly when the one-step map reproduces the pairs. Returns shape (N,).
    """
    _check_pairs("distillation_loss", x0, x1)
    residual = one_step(velocity_fn, x0) - x1
    return jnp.sum(residual.reshape(x0.shape[0], -1) ** 2, axis=1)


def straightness(key, velocity_fn: Callable, x_init, num_steps: int | None = 100, method: str = "euler"):
    """Straightness S of the flow from x_init (Liu et al. 2023):

        S = E int_0^1 ||(X_1 - X_0) - v(X_t, t)||^2 dt,

    zero exactly when every trajectory is a straight line at constant speed.
    Since int_0^1 v(X_t, t) dt = X_1 - X_0, S = E[int ||v||^2 dt - ||X_1 - X_0||^2];
    the integral of ||v||^2 rides along the ODE as an extra state, so the whole
    computation is one `genjax.integrate.solve_ode` call (for Euler it is exactly
    the left-point sum over the Euler trajectory). `key` is unused: the ODE is
    deterministic; it is kept for the usual (key, ...) signature.
    Returns (S averaged over the examples, nfe).
    """
    del key

    def augmented(state, t):
        x, _ = state
        v = velocity_fn(x, jnp.full((x.shape[0],), t, dtype=x.dtype))
        return v, jnp.sum(v.reshape(x.shape[0], -1) ** 2, axis=1)

    state0 = (x_init, jnp.zeros((x_init.shape[0],), x_init.dtype))
    (x1, energy), nfe = integrate.solve_ode(augmented, state0, 0.0, 1.0, method=method, num_steps=num_steps)
    displacement = jnp.sum((x1 - x_init).reshape(x_init.shape[0], -1) ** 2, axis=1)
    return jnp.mean(energy - displacement), nfe


def reflow_pairs(key, velocity_fn: Callable, num: int, shape, **solver_kwargs):
    """Noise / sample pairs (x0, x1 = ODE(x0)) for the next rectified-flow round
    ("reflow", Liu et al. 2023). `shape` is the event shape.
    Solver keywords as in `ode_sample`. Returns (x0, x1), each (num, *shape).
    """
    x0 = jax.random.normal(key, (num,) + tuple(shape))
    x1, _ = ode_sample(key, velocity_fn, x0.shape, x_init=x0, **solver_kwargs)
    return x0, x1


def euler_trajectories(velocity_fn: Callable, x0, num_steps: int):
    """The states of the Euler scheme x_{k+1} = x_k + h v(x_k, k h), h = 1 / num_steps,
    from x0 at t = 0 to t = 1 (for plotting trajectories and checking straightness):
    `genjax.integrate.solve_ode_trajectory` with method="euler".

    Returns an array of shape (num_steps + 1, *x0.shape); entry k is the state at
    t = k / num_steps, the last one is `ode.ode_sample(..., method="euler")`.
    """
    num_steps = check_int("num_steps", num_steps, 1)
    xs, _ = integrate.solve_ode_trajectory(vector_field(velocity_fn), x0, 0.0, 1.0,
                                           method="euler", num_steps=num_steps)
    return xs


def trajectory_straightness(xs_KN):
    """Straightness of discretised trajectories xs of shape (K + 1, N, *event) on a
    uniform time grid of [0, 1], with the finite-difference velocity
    v_k = K (x_{k+1} - x_k) (Liu et al. 2023, Def. 2.3, as a left-point sum):

        S = mean_n [ (1/K) sum_k ||v_k||^2 - ||x_K - x_0||^2 ].

    For Euler trajectories this is `straightness` with method="euler" exactly.
    S >= 0 (Cauchy-Schwarz), with equality only for straight constant-speed paths.
    """
    num_steps = xs_KN.shape[0] - 1
    if num_steps < 1:
        raise ValueError(f"trajectory_straightness: need at least 2 time points; got shape {xs_KN.shape}")
    n = xs_KN.shape[1]
    flat = xs_KN.reshape(num_steps + 1, n, -1)
    v = num_steps * (flat[1:] - flat[:-1])
    energy = jnp.mean(jnp.sum(v**2, axis=2), axis=0)
    displacement = jnp.sum((flat[-1] - flat[0]) ** 2, axis=1)
    return jnp.mean(energy - displacement)


def pairs_batch_fn(x0, x1, batch_size: int) -> Callable:
    """batch_fn(data_key, step) -> (x0[idx], x1[idx]) drawing `batch_size` pairs
    uniformly with replacement from a fixed set of pairs (e.g. `reflow_pairs`),
    a function of (key, step) only, as `genjax.train.make_train_fn` requires.
    """
    _check_pairs("pairs_batch_fn", x0, x1)
    batch_size = check_int("batch_size", batch_size, 1)
    num = x0.shape[0]
    if num < 1:
        raise ValueError(f"pairs_batch_fn: need at least one pair; got x0 of shape {x0.shape}")

    def batch_fn(data_key, step):
        idx = jax.random.randint(jax.random.fold_in(data_key, step), (batch_size,), 0, num)
        return x0[idx], x1[idx]

    return batch_fn


def make_distillation_model(net, *, data_shape) -> Model:
    """A one-step generator x1 = x0 + v(x0, 0) with v = `net.apply(params, x, t)`,
    trained by `distillation_loss` on batches of pairs (x0, x1) of a rectified
    flow (Liu et al. 2023, sec. 2.3).

    Using the flow's own network keeps the parameter tree of the flow it distils,
    so training can start from the flow's parameters (a warm start, as Liu et al. do).

    loss: mean over the batch of `distillation_loss`.
    sample(params, key, num): one network evaluation on fresh N(0, I) noise.
    log_prob: None (the map is not known to be invertible).
    """
    data_shape = tuple(int(d) for d in data_shape)

    def velocity_of(params):
        return lambda x, t: net.apply(params, x, t)

    def check(batch):
        x0, x1 = batch
        check_event_shape(f"distillation noise x0 (data_shape={data_shape})", x0, data_shape)
        check_event_shape(f"distillation data x1 (data_shape={data_shape})", x1, data_shape)
        return x0, x1

    def init(key, batch):
        x0, _ = check(batch)
        return net.init(key, x0, jnp.zeros((x0.shape[0],), x0.dtype))

    def loss(params, key, batch):
        del key  # the loss is deterministic: no time, no noise
        x0, x1 = check(batch)
        value = jnp.mean(distillation_loss(velocity_of(params), x0, x1))
        return value, {"distill_loss": value}

    def sample(params, key, num):
        num = check_int("num", num, 0)
        x0 = jax.random.normal(key, (num,) + data_shape)
        return one_step(velocity_of(params), x0)

    return Model(init=init, loss=loss, sample=sample, log_prob=None)
