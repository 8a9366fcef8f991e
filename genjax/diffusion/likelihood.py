"""Exact log-likelihoods of score-based models through the probability-flow ODE
(Song et al. 2021, sec. D.2, eq. 39-40), in nats per example."""
import math
from typing import Callable

import jax
import jax.numpy as jnp

from genjax import integrate
from genjax.core import bits_per_dim  # noqa: F401  (re-exported for convenience)
from genjax.diffusion.samplers import probability_flow
from genjax.diffusion.sde import SDE


def log_likelihood(
    key,
    sde: SDE,
    score_fn: Callable,
    x,
    exact_divergence: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    probe: str = "rademacher",
    num_probes: int = 1,
    method: str = "adaptive",
    num_steps: int | None = None,
    prior_log_prob: Callable | None = None,
):
    """log p_eps(x) of the probability-flow ODE model, per example, in nats.

    Exact divergence (D Jacobian-vector products; small D) or the Hutchinson
    estimator with Rademacher or Gaussian probes (unbiased, FFJORD).
    `prior_log_prob` replaces the SDE's prior at t=1 (e.g. the exact marginal,
    to isolate the solver's error from the prior's mismatch).
    Returns (log_prob of shape (N,), nfe).
    """
    logp, _, nfe = integrate.ode_log_likelihood(
        key, probability_flow(sde, score_fn), x, eps, sde.T,
        sde.prior_log_prob if prior_log_prob is None else prior_log_prob,
        exact_divergence=exact_divergence, probe=probe, num_probes=num_probes,
        rtol=rtol, atol=atol, method=method, num_steps=num_steps,
    )
    return logp, nfe


def uniform_dequantize(key, x_int, num_levels: int, low: float = 0.0, high: float = 1.0):
    """Maps integer data in {0..L-1} to continuous y = low + (x + u)(high - low)/L, u ~ U[0,1)^D.

    Returns (y, log_bin_volume) where log_bin_volume = D log((high - low)/L) is the
    log-volume of one data cell in model space, needed by `discrete_nll`.
    """
    u = jax.random.uniform(key, x_int.shape)
    width = (high - low) / num_levels
    dim = math.prod(x_int.shape[1:])
    return low + (x_int + u) * width, dim * math.log(width)


def discrete_nll(log_density, log_bin_volume):
    """Variational bound on -log P(x_int) for uniformly dequantized data:
    -log P(x) <= -E_u[log p(y)] - log vol(cell)  (Theis et al. 2016; Ho et al. 2019, eq. 1)."""
    return -(log_density + log_bin_volume)
