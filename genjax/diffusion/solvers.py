"""Fast deterministic (and DDIM's stochastic) samplers for any diffusion SDE.

Every sampler here has the signature

    sampler(key, sde, score_fn, shape, num_steps, ..., x_init=None, eps=1e-3,
            discretization=..., rho=7.0, denoise_to_zero=False) -> samples of `shape`

and reads the forward process only through `sde.marginal_coeffs(t) = (alpha, sigma)`
of x_t = alpha x0 + sigma eps, so the same code runs on VP, sub-VP and VE. Time runs
from `sde.T` (noise) down to `eps` (data). Internally they use the data prediction
(denoiser) x0_fn = `parameterization.denoiser_from_score(sde, score_fn)`; a model
that predicts eps, x0 or v enters through `parameterization.score_from_*`.

Variables used throughout (Lu et al. 2022, sec. 3; Karras et al. 2022, eq. 4-5):
    lambda(t) = log(alpha / sigma)   half log-SNR, decreasing in t
    sigma_edm(t) = sigma / alpha = exp(-lambda)   EDM's noise level of x / alpha

Time grids (`discretization`, shared by all samplers; `time_grid`):
    "logsnr"     uniform in lambda (Lu et al. 2022, DPM-Solver sec. 3.4)
    "edm"        sigma_edm_i = (s_max^(1/rho) + i/n (s_min^(1/rho) - s_max^(1/rho)))^rho
                 (Karras et al. 2022, eq. 5, rho = 7)
    "quadratic"  t_i = eps + (T - eps) (1 - i/n)^2 (Song et al. 2020, DDIM App. D.2)
    "uniform"    t_i uniform in [eps, T]
lambda and sigma_edm are mapped back to t numerically through `marginal_coeffs`
(`t_from_log_snr`), exact to float precision for any SDE whose log-SNR decreases in t.

Cost: one score evaluation is one NFE; `nfe(name, num_steps)` gives each sampler's
count: DDIM and DPM-Solver++ use num_steps, EDM's Heun 2 num_steps - 1.

Final step: by default the grid ends at t = eps and the samplers return x_eps, the
point the probability-flow ODE reaches at eps. With `denoise_to_zero=True` the grid
has num_steps points from T to eps and a last step goes from eps to t = 0, where
sigma = 0: every solver's update there reduces to the denoised x0 = alpha(0) D(x, eps)
(Karras et al. 2022, Alg. 1's final Euler step; k-diffusion's and DPM-Solver's first-
order step to sigma = 0). The NFE is the same in both modes.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from genjax.core import check_int, interp
from genjax.diffusion.parameterization import (  # noqa: F401  (re-exported)
    denoiser_from_score,
    edm_denoiser,
    edm_preconditioning,
    edm_training_target,
    x0_fn_from_edm_denoiser,
)
from genjax.diffusion.sde import SDE, broadcast_to_batch, initial_noise

DISCRETIZATIONS = ("logsnr", "edm", "quadratic", "uniform")
DPM_SOLVER_ORDERS = (1, 2, 3)
THIRD_ORDER_FORMS = ("exact", "reference")
_TABLE_SIZE = 1025  # first guess for inverting lambda(t); Newton does the rest
_NEWTON_STEPS = 3


# ---- time grids ---------------------------------------------------------------------


def log_snr(sde: SDE, t):
    """lambda(t) = log(alpha(t) / sigma(t)), half the log signal-to-noise ratio."""
    alpha, sigma = sde.marginal_coeffs(t)
    return jnp.log(alpha) - jnp.log(sigma)


def t_from_log_snr(sde: SDE, lam, t_min: float, t_max: float):
    """The t in [t_min, t_max] with lambda(t) = lam (elementwise), for any SDE.

    lambda is decreasing in t for every diffusion (the SNR falls as noise is added).
    A first guess interpolates a table of lambda on t_min + (t_max - t_min) u^2
    (dense near the data, where lambda moves fastest); Newton's method on lambda(t)
    then refines it to float precision. No loops, so it compiles fast inside a
    sampler. lam outside [lambda(t_max), lambda(t_min)] is clipped to the ends.
    """
    lam = jnp.asarray(lam, jnp.float32)
    u = jnp.linspace(0.0, 1.0, _TABLE_SIZE)
    t_table = t_min + (t_max - t_min) * u * u
    t = interp(-lam, -log_snr(sde, t_table), t_table)
    for _ in range(_NEWTON_STEPS):
        value, slope = jax.jvp(lambda s: log_snr(sde, s), (t,), (jnp.ones_like(t),))
        t = jnp.clip(t - (value - lam) / slope, t_min, t_max)
    return t


def _check_choice(kind: str, value, valid):
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {valid}")


def _check_steps(num_steps, minimum: int = 1) -> int:
    if isinstance(num_steps, bool):
        raise ValueError(f"num_steps must be a Python int >= {minimum}, got {num_steps!r}")
    return check_int("num_steps", num_steps, minimum)


def time_grid(sde: SDE, num_steps: int, eps: float = 1e-3, discretization: str = "logsnr", rho: float = 7.0):
    """num_steps + 1 decreasing times from sde.T to eps, endpoints exact (see module doc)."""
    _check_choice("discretization", discretization, DISCRETIZATIONS)
    n = _check_steps(num_steps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    if discretization == "uniform":
        return jnp.linspace(sde.T, eps, n + 1)
    frac = jnp.linspace(0.0, 1.0, n + 1)
    if discretization == "quadratic":
        return eps + (sde.T - eps) * (1.0 - frac) ** 2
    lam_max = log_snr(sde, jnp.asarray(eps, jnp.float32))
    lam_min = log_snr(sde, jnp.asarray(sde.T, jnp.float32))
    if discretization == "logsnr":
        lam = lam_min + frac * (lam_max - lam_min)
    else:
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        # sigma_edm = exp(-lambda); the rho-th root spacing of Karras et al. eq. 5.
        root_max, root_min = jnp.exp(-lam_min / rho), jnp.exp(-lam_max / rho)
        lam = -rho * jnp.log(root_max + frac * (root_min - root_max))
    ts = t_from_log_snr(sde, lam, eps, sde.T)
    return ts.at[0].set(sde.T).at[-1].set(eps)


def _sampler_grid(sde, num_steps, eps, discretization, rho, denoise_to_zero):
    """Grid of the steps taken before the optional final step to t = 0.

    Returns (ts, alphas, sigmas, lams) at the grid points.
    """
    if denoise_to_zero:
        if _check_steps(num_steps) < 2:
            raise ValueError(f"denoise_to_zero needs num_steps >= 2, got {num_steps}")
        num_steps = num_steps - 1
    ts = time_grid(sde, num_steps, eps, discretization, rho)
    alphas, sigmas = sde.marginal_coeffs(ts)
    return ts, alphas, sigmas, jnp.log(alphas) - jnp.log(sigmas)


def _per_example(t, x):
    return jnp.full((x.shape[0],), t, x.dtype)


def _denoise_to_zero(sde, x0_fn, x, t_last):
    """x_0 = alpha(0) D(x, t_last): every solver's update when the target sigma is 0."""
    alpha0, _ = sde.marginal_coeffs(jnp.zeros((x.shape[0],), x.dtype))
    return broadcast_to_batch(alpha0, x) * x0_fn(x, _per_example(t_last, x))


def nfe(sampler_name: str, num_steps: int) -> int:
    """Score evaluations used by `{sampler_name}_sample` with `num_steps` steps."""
    counts = {"ddim": num_steps, "dpm_solver": num_steps, "edm_heun": 2 * num_steps - 1}
    _check_choice("sampler", sampler_name, tuple(counts))
    return counts[sampler_name]


# ---- DDIM -------------------------------------------------------------------------------


def ddim_sample(
    key,
    sde: SDE,
    score_fn: Callable,
    shape,
    num_steps: int = 50,
    eta: float = 0.0,
    *,
    x_init=None,
    eps: float = 1e-3,
    discretization: str = "uniform",
    rho: float = 7.0,
    denoise_to_zero: bool = False,
):
    """DDIM (Song, Meng & Ermon 2020, eq. 12) for a general alpha, sigma:

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps_hat + c z,
        c = eta sigma_s sqrt(1 - exp(2 (lambda_t - lambda_s)))   (their eq. 16)

    with x0 = D(x_t, t), eps_hat = (x_t - alpha_t x0) / sigma_t. c is eta times the
    std of the DDPM posterior q(x_s | x_t, x0); eta = 1 is ancestral DDPM sampling,
    eta = 0 the deterministic DDIM, which is Euler's method for the probability-flow
    ODE in the scaled variables (x / alpha, sigma / alpha) (their eq. 14) and the
    first-order DPM-Solver (Lu et al. 2022, eq. 3.7). NFE = num_steps.
    """
    if isinstance(eta, (int, float)) and not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    init_key, noise_key = jax.random.split(key)
    x = initial_noise(init_key, sde, shape, x_init)
    x0_fn = denoiser_from_score(sde, score_fn)
    ts, alphas, sigmas, lams = _sampler_grid(sde, num_steps, eps, discretization, rho, denoise_to_zero)
    c = eta * sigmas[1:] * jnp.sqrt(-jnp.expm1(2.0 * (lams[:-1] - lams[1:])))
    eps_coef = jnp.sqrt(jnp.maximum(sigmas[1:] ** 2 - c**2, 0.0))

    def step(x, inputs):
        i, t, alpha_t, sigma_t, alpha_s, c_i, e_i = inputs
        x0 = x0_fn(x, _per_example(t, x))
        eps_hat = (x - alpha_t * x0) / sigma_t
        z = jax.random.normal(jax.random.fold_in(noise_key, i), x.shape, x.dtype)
        return alpha_s * x0 + e_i * eps_hat + c_i * z, None

    steps = jnp.arange(ts.shape[0] - 1)
    x, _ = jax.lax.scan(step, x, (steps, ts[:-1], alphas[:-1], sigmas[:-1], alphas[1:], c, eps_coef))
    if denoise_to_zero:
        x = _denoise_to_zero(sde, x0_fn, x, ts[-1])
    return x


# ---- DPM-Solver++ (multistep, data prediction) -----------------------------------------


def _dpm_solver_coeffs(lams, order, third_order):
    """Per-step weights (c0, c1, c2) of D_i, D_{i-1}, D_{i-2} in

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (c0 D_i + c1 D_{i-1} + c2 D_{i-2}),

    the exponential integrator of the probability-flow ODE in data-prediction form
        x_s = (sigma_s / sigma_t) x_t + alpha_s int_{lambda_t}^{lambda_s} e^{-(lambda_s - l)} D(l) dl
    (Lu et al. 2022, DPM-Solver++ eq. 9) with D replaced by the polynomial in lambda
    through the last `order` predictions:
      order 1: D_i (DDIM);
      order 2: Algorithm 2 (2M): D_i + (D_i - D_{i-1}) / (2 r), r = h_{i-1} / h_i;
      order 3: the quadratic through D_i, D_{i-1}, D_{i-2}, integrated exactly (3M).
    third_order="reference" instead uses the third-order step of the DPM-Solver and
    diffusers code (k-diffusion's sample_dpmpp_3m_sde at eta = 0 takes the same step):
    its weight on the second difference is half the exact integral's, so its local
    error is O(h^3) and it converges at second order as h -> 0 (measured in
    docs/solvers_oracle.md).
    Step i uses order min(order, i + 1): the lower-order warm-up.
    """
    n = lams.shape[0] - 1
    i = jnp.arange(n)
    h = lams[1:] - lams[:-1]
    lam_prev = lams[jnp.maximum(i - 1, 0)]
    lam_prev2 = lams[jnp.maximum(i - 2, 0)]
    h1 = jnp.where(i >= 1, lams[:-1] - lam_prev, h)  # placeholders where unused avoid 0/0
    h2 = jnp.where(i >= 2, lam_prev - lam_prev2, h)
    step_order = jnp.minimum(order, i + 1)

    phi1 = -jnp.expm1(-h)  # int_0^h e^{-(h-u)} du
    phi2 = h + jnp.expm1(-h)  # int_0^h e^{-(h-u)} u du
    phi3 = 0.5 * h * h - phi2  # int_0^h e^{-(h-u)} u^2 / 2 du

    zero = jnp.zeros_like(h)
    first = (phi1, zero, zero)
    r = h1 / h
    second = (phi1 * (1.0 + 0.5 / r), -phi1 * 0.5 / r, zero)
    # Newton form about lambda_i: D(lambda_i + u) = D_i + u (d0 + h1 d2) + u^2 d2 with
    # d0 = (D_i - D_{i-1}) / h1, d2 = (d0 - (D_{i-1} - D_{i-2}) / h2) / (h1 + h2);
    # q, the weight of d2, is h1 int e^{-(h-u)} u du + int e^{-(h-u)} u^2 du.
    q = phi2 * h1 + (2.0 * phi3 if third_order == "exact" else phi3)
    third = (
        phi1 + phi2 / h1 + q / (h1 * (h1 + h2)),
        -phi2 / h1 - q * (1.0 / h1 + 1.0 / h2) / (h1 + h2),
        q / (h2 * (h1 + h2)),
    )
    pick = lambda a, b, c: jnp.where(step_order == 1, a, jnp.where(step_order == 2, b, c))
    return tuple(pick(a, b, c) for a, b, c in zip(first, second, third))


def dpm_solver_sample(
    key,
    sde: SDE,
    score_fn: Callable,
    shape,
    num_steps: int = 10,
    order: int = 3,
    *,
    x_init=None,
    eps: float = 1e-3,
    discretization: str = "logsnr",
    rho: float = 7.0,
    denoise_to_zero: bool = False,
    third_order: str = "exact",
):
    """Multistep DPM-Solver++ in data-prediction form (Lu et al. 2022, "DPM-Solver++",
    Algorithm 2 for order 2 (2M); order 3 is the 3M variant), see `_dpm_solver_coeffs`.

    One denoiser call per step (NFE = num_steps): each step reuses the previous
    steps' predictions, and the first steps use lower orders (warm-up). No lower
    order is forced on the final steps. third_order: "exact" (third order) or
    "reference" (the k-diffusion / diffusers 3M update), used only when order = 3.
    """
    _check_choice("DPM-Solver order", order, DPM_SOLVER_ORDERS)
    _check_choice("third_order form", third_order, THIRD_ORDER_FORMS)
    x = initial_noise(key, sde, shape, x_init)
    x0_fn = denoiser_from_score(sde, score_fn)
    ts, alphas, sigmas, lams = _sampler_grid(sde, num_steps, eps, discretization, rho, denoise_to_zero)
    c0, c1, c2 = _dpm_solver_coeffs(lams, order, third_order)
    ratio = sigmas[1:] / sigmas[:-1]

    def step(carry, inputs):
        x, d_prev, d_prev2 = carry
        t, ratio_i, alpha_s, c0_i, c1_i, c2_i = inputs
        d = x0_fn(x, _per_example(t, x))
        x_next = ratio_i * x + alpha_s * (c0_i * d + c1_i * d_prev + c2_i * d_prev2)
        return (x_next, d, d_prev), None

    zeros = jnp.zeros_like(x)
    (x, _, _), _ = jax.lax.scan(step, (x, zeros, zeros), (ts[:-1], ratio, alphas[1:], c0, c1, c2))
    if denoise_to_zero:
        x = _denoise_to_zero(sde, x0_fn, x, ts[-1])
    return x


# ---- EDM Heun -----------------------------------------------------------------------------


def edm_heun_sample(
    key,
    sde: SDE,
    score_fn: Callable,
    shape,
    num_steps: int = 18,
    rho: float = 7.0,
    *,
    x_init=None,
    eps: float = 1e-3,
    discretization: str = "edm",
    denoise_to_zero: bool = False,
):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1, S_churn = 0).

    Works in the scaled variables y = x / alpha, s = sigma / alpha, where the
    probability-flow ODE of any SDE reads dy/ds = (y - D(alpha y, t(s))) / s (their
    eq. 4-5 with s(t) = alpha, sigma(t) = sigma / alpha). Heun's second-order method
    in s on every step but the last, Euler on the last (to eps, or to s = 0 with
    denoise_to_zero, where it returns D): NFE = 2 num_steps - 1.
    """
    x = initial_noise(key, sde, shape, x_init)
    x0_fn = denoiser_from_score(sde, score_fn)
    ts, alphas, sigmas, _ = _sampler_grid(sde, num_steps, eps, discretization, rho, denoise_to_zero)
    s_grid = sigmas / alphas

    def slope(y, t, alpha, s):
        return (y - x0_fn(alpha * y, _per_example(t, y))) / s

    def heun(y, inputs):
        t, t_next, alpha, alpha_next, s, s_next = inputs
        d = slope(y, t, alpha, s)
        y_euler = y + (s_next - s) * d
        d_next = slope(y_euler, t_next, alpha_next, s_next)
        return y + (s_next - s) * 0.5 * (d + d_next), None

    y = x / alphas[0]
    if denoise_to_zero:
        heun_grid = (ts[:-1], ts[1:], alphas[:-1], alphas[1:], s_grid[:-1], s_grid[1:])
        y, _ = jax.lax.scan(heun, y, heun_grid)
        return _denoise_to_zero(sde, x0_fn, alphas[-1] * y, ts[-1])
    heun_grid = (ts[:-2], ts[1:-1], alphas[:-2], alphas[1:-1], s_grid[:-2], s_grid[1:-1])
    y, _ = jax.lax.scan(heun, y, heun_grid)
    y = y + (s_grid[-1] - s_grid[-2]) * slope(y, ts[-2], alphas[-2], s_grid[-2])
    return alphas[-1] * y
