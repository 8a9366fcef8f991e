"""Denoising score matching in continuous time (Song et al. 2021, eq. 7).

The network predicts the noise: score(x, t) = -eps_hat(x, t) / sigma(t), so the
loss with the usual weighting lambda(t) = sigma(t)^2 is ||eps_hat - eps||^2 and the
likelihood weighting lambda(t) = g(t)^2 (Song, Durkan et al. 2021, "Maximum
Likelihood Training of Score-Based Diffusion Models", Thm. 1) multiplies it by
g(t)^2 / sigma(t)^2.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from genjax.diffusion.sde import SDE, broadcast_to_batch


def score_from_noise_prediction(sde: SDE, eps_fn: Callable) -> Callable:
    """score(x, t) = -eps_hat(x, t) / sigma(t)."""

    def score_fn(x, t):
        _, sigma = sde.marginal_coeffs(t)
        return -eps_fn(x, t) / broadcast_to_batch(sigma, x)

    return score_fn


def dsm_loss(
    key,
    sde: SDE,
    eps_fn: Callable,
    x0,
    *,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
):
    """Per-example continuous-time DSM loss, t ~ U(eps, 1), summed over dimensions.

    Returns (loss_N, t_N).
    """
    t_key, z_key = jax.random.split(key)
    batch = x0.shape[0]
    t = jax.random.uniform(t_key, (batch,), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_key, x0.shape)
    mean, sigma = sde.marginal_prob(x0, t)
    x_t = mean + broadcast_to_batch(sigma, x0) * z
    residual = jnp.reshape(eps_fn(x_t, t) - z, (batch, -1))
    loss = jnp.sum(residual**2, axis=1)
    if likelihood_weighting:
        _, g = sde.sde(x0, t)
        loss = loss * g**2 / sigma**2
    return loss, t
