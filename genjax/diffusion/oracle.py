"""Exact scores and marginals of a diffused Gaussian mixture: the oracle that lets
samplers and likelihoods be checked with no training involved.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha(t) x_0 + sigma(t) eps, then
x_t ~ sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), so its score is closed form.
"""
from typing import Callable

from genjax.data.toy2d import GaussianMixture
from genjax.diffusion.sde import SDE


def exact_score_fn(sde: SDE, mixture: GaussianMixture) -> Callable:
    """score_fn(x, t) = grad log p_t(x) for data distributed as `mixture`."""

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return mixture.diffused_score(x, alpha, sigma)

    return score_fn


def exact_log_prob_fn(sde: SDE, mixture: GaussianMixture, t: float) -> Callable:
    """x -> log p_t(x), the exact marginal density at a fixed time t."""

    def log_prob(x):
        alpha, sigma = sde.marginal_coeffs(t)
        return mixture.diffused_log_prob(x, alpha, sigma)

    return log_prob
