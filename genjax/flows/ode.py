"""The flow ODE dx/dt = v(x, t) between a standard normal and the data: sampling
and exact likelihoods of a velocity field, shared by flow matching, rectified
flow and continuous normalizing flows.

Time convention (that of every module in `genjax.flows`): t = 0 is the standard
normal noise and t = 1 is the data. A velocity field `velocity_fn(x, t) -> v`,
with x of shape (N, *event) and t of shape (N,), carries noise to data.

Both functions here are solvers and, like every solver of `genjax.integrate`
(the one ODE path of the library), return their number of velocity evaluations
beside the result: `ode_sample -> (samples, nfe)`, `log_likelihood ->
(log_prob, nfe)`. A model's `sample` / `log_prob` (`genjax.core.Model`) drop it.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from genjax import integrate
from genjax.flows.bijectors import standard_normal_log_prob


def vector_field(velocity_fn: Callable) -> Callable:
    """Adapts velocity_fn(x, t_N) to the (y, scalar t) convention of `genjax.integrate`."""

    def f(x, t):
        return velocity_fn(x, jnp.full((x.shape[0],), t, dtype=x.dtype))

    return f


def _initial_noise(key, shape, x_init):
    shape = tuple(shape)
    if x_init is None:
        return jax.random.normal(key, shape)
    if tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}; expected {shape}")
    return x_init


def ode_sample(
    key,
    velocity_fn: Callable,
    shape,
    method: str = "adaptive",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    x_init=None,
):
    """Samples by solving dx/dt = v(x, t) from noise at t = 0 to data at t = 1.

    method: "adaptive" (Tsit5) or a fixed-step method ("euler", "midpoint",
    "heun", "rk4") with `num_steps`. x_init replaces the noise drawn from `key`.
    Returns (samples of `shape`, number of velocity evaluations).
    """
    x0 = _initial_noise(key, shape, x_init)
    return integrate.solve_ode(
        vector_field(velocity_fn), x0, 0.0, 1.0,
        method=method, num_steps=num_steps, rtol=rtol, atol=atol,
    )


def log_likelihood(
    key,
    velocity_fn: Callable,
    x,
    exact_divergence: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "adaptive",
    num_steps: int | None = None,
    probe: str = "rademacher",
    num_probes: int = 1,
):
    """log p_1(x) in nats per example of the flow with a standard normal at t = 0:

        log p_1(x) = log N(z; 0, I) - int_0^1 div v(x_t, t) dt,   z = x_0,

    integrated from t = 1 back to t = 0 (Chen et al. 2018, Thm. 1; Lipman et al.
    2023, sec. 6). The divergence is exact (D Jacobian-vector products) or
    Hutchinson's unbiased estimate with `num_probes` probes (Grathwohl et al. 2019).
    Returns (log_prob of shape (N,), nfe).
    """
    logp, _, nfe = integrate.ode_log_likelihood(
        key, vector_field(velocity_fn), x, 1.0, 0.0, standard_normal_log_prob,
        exact_divergence=exact_divergence, probe=probe, num_probes=num_probes,
        method=method, num_steps=num_steps, rtol=rtol, atol=atol,
    )
    return logp, nfe
