"""Denoising score matching in continuous time (Song et al. 2021, eq. 7).

The network predicts the noise: score(x, t) = -eps_hat(x, t) / sigma(t)
(`parameterization.score_from_eps`), so the
loss with the usual weighting lambda(t) = sigma(t)^2 is ||eps_hat - eps||^2 and the
likelihood weighting lambda(t) = g(t)^2 (Song, Durkan et al. 2021, "Maximum
Likelihood Training of Score-Based Diffusion Models", Thm. 1) multiplies it by
g(t)^2 / sigma(t)^2.
"""
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from genjax.core import interp
from genjax.diffusion.sde import SDE, broadcast_to_batch


def likelihood_weight(sde: SDE, t):
    """g(t)^2 / sigma(t)^2: the likelihood weighting in the noise parameterisation."""
    _, g = sde.sde(jnp.zeros((jnp.size(t), 1)), t)
    _, sigma = sde.marginal_coeffs(t)
    return g**2 / sigma**2


def importance_time_sampler(sde: SDE, eps: float, grid_size: int = 2048):
    """Sampler of t with density q(t) proportional to g(t)^2 / sigma(t)^2 on [eps, T],
    and the normaliser Z, so that E_q[Z ||eps_hat - eps||^2] is the likelihood-
    weighted loss with far less variance than uniform t (Song, Durkan et al. 2021,
    sec. 5). The CDF is tabulated on a log-spaced grid (w(t) ~ 1/t near 0) and
    inverted by interpolation, so it works for any SDE.
    """
    ts = jnp.geomspace(eps, sde.T, grid_size)
    w = likelihood_weight(sde, ts)
    cdf = jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * (w[1:] + w[:-1]) * jnp.diff(ts))])
    total = cdf[-1]

    def sample(key, shape):
        u = jax.random.uniform(key, shape) * total
        return interp(u, cdf, ts)

    return sample, total


def dsm_loss(
    key,
    sde: SDE,
    eps_fn: Callable,
    x0,
    *,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    eps: float = 1e-5,
):
    """Per-example continuous-time DSM loss, summed over dimensions.

    t ~ U(eps, 1); with likelihood weighting and importance_sampling, t ~ q(t)
    proportional to the weight instead (same expectation, lower variance).
    Returns (loss_N, t_N).
    """
    t_key, z_key = jax.random.split(key)
    batch = x0.shape[0]
    if likelihood_weighting and importance_sampling:
        sample_t, normaliser = importance_time_sampler(sde, eps)
        t = sample_t(t_key, (batch,))
    else:
        t = jax.random.uniform(t_key, (batch,), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_key, x0.shape)
    mean, sigma = sde.marginal_prob(x0, t)
    x_t = mean + broadcast_to_batch(sigma, x0) * z
    eps_hat = eps_fn(x_t, t)
    # A prediction of another shape (say (N, 1)) would broadcast against the noise.
    chex.assert_equal_shape([eps_hat, z], custom_message="eps_fn(x_t, t) vs the noise")
    residual = jnp.reshape(eps_hat - z, (batch, -1))
    loss = jnp.sum(residual**2, axis=1)
    if likelihood_weighting and importance_sampling:
        # (w(t) / q(t)) * (T - eps) keeps the scale of the uniform-t estimator.
        loss = loss * normaliser / (sde.T - eps)
    elif likelihood_weighting:
        loss = loss * likelihood_weight(sde, t)
    # Per example before the caller's mean: a weight of shape (N, 1) would have
    # made it (N, N), whose mean is silently another number.
    chex.assert_shape(loss, (batch,))
    return loss, t
