"""One denoiser interface: conversions between score, eps, x0 and v predictions.

A diffusion network may predict any of four quantities about x_t = alpha x0 + sigma eps:

    score  grad_x log p_t(x) = -E[eps | x_t] / sigma        (Song et al. 2021, eq. 7)
    eps    E[eps | x_t]                                       (Ho et al. 2020, eq. 11)
    x0     E[x0 | x_t], the denoiser D                        (Karras et al. 2022, eq. 3)
    v      alpha E[eps | x_t] - sigma E[x0 | x_t]             (Salimans & Ho 2022, sec. 4)

Given (alpha, sigma) each is an affine function of any other and of x, so every
sampler can run on every model. The conversions hold for any alpha, sigma > 0, not
only the variance-preserving alpha^2 + sigma^2 = 1 (v is inverted with the factor
alpha^2 + sigma^2, which is 1 for VP).

Two layers:
  * `convert(pred, x, alpha, sigma, source=..., target=...)` and the named one-line
    conversions, pure functions of arrays. alpha, sigma are per example (N,) or
    scalars and broadcast against x of shape (N, ...).
  * Function transformers `x0_fn = denoiser_from_score(sde, score_fn)`,
    `score_fn = score_from_eps(sde, eps_fn)`, ... on functions `f(x, t)` with t of
    shape (N,) (one time per example) or a scalar; they read (alpha, sigma) from
    `sde.marginal_coeffs(t)`.

EDM's preconditioning (Karras et al. 2022, Table 1) is one more parameterization of
the denoiser and lives here as well.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from genjax.diffusion.sde import SDE, broadcast_to_batch

PARAMETERIZATIONS = ("score", "eps", "x0", "v")


def _coeffs(x, alpha, sigma):
    alpha = jnp.asarray(alpha, x.dtype)
    sigma = jnp.asarray(sigma, x.dtype)
    return broadcast_to_batch(alpha, x), broadcast_to_batch(sigma, x)


# ---- pairwise conversions (x_t = alpha x0 + sigma eps) ---------------------------------


def eps_from_score_value(score, x, alpha, sigma):
    """eps = -sigma * score (Song et al. 2021, eq. 7 with the Gaussian kernel)."""
    _, s = _coeffs(x, alpha, sigma)
    return -s * score


def score_from_eps_value(eps, x, alpha, sigma):
    """score = -eps / sigma."""
    _, s = _coeffs(x, alpha, sigma)
    return -eps / s


def x0_from_eps_value(eps, x, alpha, sigma):
    """x0 = (x - sigma eps) / alpha."""
    a, s = _coeffs(x, alpha, sigma)
    return (x - s * eps) / a


def eps_from_x0_value(x0, x, alpha, sigma):
    """eps = (x - alpha x0) / sigma."""
    a, s = _coeffs(x, alpha, sigma)
    return (x - a * x0) / s


def x0_from_score_value(score, x, alpha, sigma):
    """Tweedie's formula x0 = (x + sigma^2 score) / alpha (Efron 2011, eq. 2.8)."""
    a, s = _coeffs(x, alpha, sigma)
    return (x + s * s * score) / a


def score_from_x0_value(x0, x, alpha, sigma):
    """score = (alpha x0 - x) / sigma^2, the inverse of Tweedie's formula."""
    a, s = _coeffs(x, alpha, sigma)
    return (a * x0 - x) / (s * s)


def v_from_x0_eps_value(x0, eps, x, alpha, sigma):
    """v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4)."""
    a, s = _coeffs(x, alpha, sigma)
    return a * eps - s * x0


def x0_from_v_value(v, x, alpha, sigma):
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2): alpha x - sigma v = (alpha^2 + sigma^2) x0."""
    a, s = _coeffs(x, alpha, sigma)
    return (a * x - s * v) / (a * a + s * s)


def eps_from_v_value(v, x, alpha, sigma):
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2): sigma x + alpha v = (alpha^2 + sigma^2) eps."""
    a, s = _coeffs(x, alpha, sigma)
    return (s * x + a * v) / (a * a + s * s)


def _to_x0(pred, x, alpha, sigma, source):
    if source == "x0":
        return pred
    if source == "eps":
        return x0_from_eps_value(pred, x, alpha, sigma)
    if source == "score":
        return x0_from_score_value(pred, x, alpha, sigma)
    return x0_from_v_value(pred, x, alpha, sigma)


def _to_eps(pred, x, alpha, sigma, source):
    if source == "eps":
        return pred
    if source == "x0":
        return eps_from_x0_value(pred, x, alpha, sigma)
    if source == "score":
        return eps_from_score_value(pred, x, alpha, sigma)
    return eps_from_v_value(pred, x, alpha, sigma)


def _check_name(role: str, name: str):
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown {role} parameterization {name!r}; expected one of {PARAMETERIZATIONS}")


def convert(pred, x, alpha, sigma, *, source: str, target: str):
    """Converts a `source` prediction at x_t = x into the `target` one.

    source, target in PARAMETERIZATIONS. Every pair uses a direct formula (one
    division at most), never a chain through a third quantity, except v which
    needs both x0 and eps.
    """
    _check_name("source", source)
    _check_name("target", target)
    if source == target:
        return pred
    if target == "x0":
        return _to_x0(pred, x, alpha, sigma, source)
    if target == "eps":
        return _to_eps(pred, x, alpha, sigma, source)
    if target == "score":
        if source == "x0":
            return score_from_x0_value(pred, x, alpha, sigma)
        return score_from_eps_value(_to_eps(pred, x, alpha, sigma, source), x, alpha, sigma)
    # target == "v"
    x0 = _to_x0(pred, x, alpha, sigma, source)
    eps = _to_eps(pred, x, alpha, sigma, source)
    return v_from_x0_eps_value(x0, eps, x, alpha, sigma)


# ---- function transformers: f(x, t) -> g(x, t) ----------------------------------------


def convert_fn(sde: SDE, fn: Callable, *, source: str, target: str) -> Callable:
    """Wraps a `source` predictor fn(x, t) into a `target` predictor of the same signature."""
    _check_name("source", source)
    _check_name("target", target)

    def converted(x, t):
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        return convert(fn(x, t), x, alpha, sigma, source=source, target=target)

    return converted


def denoiser_from_score(sde: SDE, score_fn: Callable) -> Callable:
    """x0_fn(x, t) = E[x0 | x_t = x] from a score model (Tweedie's formula)."""
    return convert_fn(sde, score_fn, source="score", target="x0")


def eps_from_score(sde: SDE, score_fn: Callable) -> Callable:
    """eps_fn(x, t) = -sigma(t) score_fn(x, t)."""
    return convert_fn(sde, score_fn, source="score", target="eps")


def v_from_score(sde: SDE, score_fn: Callable) -> Callable:
    """v_fn(x, t) = alpha eps - sigma x0 from a score model."""
    return convert_fn(sde, score_fn, source="score", target="v")


def score_from_x0(sde: SDE, x0_fn: Callable) -> Callable:
    """score_fn(x, t) = (alpha x0_fn(x, t) - x) / sigma^2."""
    return convert_fn(sde, x0_fn, source="x0", target="score")


def score_from_eps(sde: SDE, eps_fn: Callable) -> Callable:
    """score_fn(x, t) = -eps_fn(x, t) / sigma(t)."""
    return convert_fn(sde, eps_fn, source="eps", target="score")


def score_from_v(sde: SDE, v_fn: Callable) -> Callable:
    """score_fn(x, t) from a v-prediction model (Salimans & Ho 2022)."""
    return convert_fn(sde, v_fn, source="v", target="score")


# ---- EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7-8) ----------------------


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 ("Ours"):

        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
        c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
        c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
        c_noise = ln(sigma) / 4

    so that the network's input and its training target both have unit variance
    when the data has standard deviation sigma_data (their eq. 7-8, App. B.6).
    sigma is EDM's noise level (x = x0 + sigma n), any shape.
    """
    sigma = jnp.asarray(sigma)
    total = sigma * sigma + sigma_data * sigma_data
    c_skip = sigma_data * sigma_data / total
    c_out = sigma * sigma_data * jax.lax.rsqrt(total)
    c_in = jax.lax.rsqrt(total)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def edm_denoiser(raw_fn: Callable, sigma_data: float = 0.5) -> Callable:
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, eq. 7).

    raw_fn(x_in, c_noise) is the raw network F with c_noise of sigma's shape (N,);
    x is in EDM's variables, x = x0 + sigma n.
    """

    def denoiser(x, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
        b = lambda c: broadcast_to_batch(c, x)
        return b(c_skip) * x + b(c_out) * raw_fn(b(c_in) * x, c_noise)

    return denoiser


def edm_training_target(x, x0, sigma, sigma_data: float = 0.5):
    """F's ideal output (x0 - c_skip x) / c_out (Karras et al. 2022, eq. 8), for which
    `edm_denoiser` returns x0 exactly. Its loss weight lambda(sigma) = 1 / c_out^2."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    return (x0 - broadcast_to_batch(c_skip, x) * x) / broadcast_to_batch(c_out, x)


def x0_fn_from_edm_denoiser(sde: SDE, denoiser: Callable) -> Callable:
    """An x0 predictor x0_fn(x, t) for `sde` from an EDM denoiser D(x_edm, sigma_edm).

    EDM's variables are the scaled ones x / alpha = x0 + (sigma / alpha) eps
    (Karras et al. 2022, eq. 4-5), and E[x0 | x] is the same in either scaling.
    """

    def x0_fn(x, t):
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        alpha = jnp.broadcast_to(alpha, (x.shape[0],))
        sigma = jnp.broadcast_to(sigma, (x.shape[0],))
        return denoiser(x / broadcast_to_batch(alpha, x), sigma / alpha)

    return x0_fn
