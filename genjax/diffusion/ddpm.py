"""Discrete-time DDPM (Ho et al. 2020) written as an SDE, so every sampler and the
probability-flow likelihood run on a DDPM-trained model unchanged.

Time runs from 0 (data) to T = 1 (noise). A schedule beta_1..beta_N defines the
chain q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I) with the marginal
x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps, abar_i = prod_{j<=i} (1 - beta_j)
(Ho et al. 2020, eq. 4). `DiscreteVPSDE` places step i at t_i = i / N and makes
log abar linear in t between grid points: a VP SDE (Song et al. 2021, eq. 32)

    dx = -beta(t)/2 x dt + sqrt(beta(t)) dw,  beta(t) = -N log(1 - beta_i) on (t_{i-1}, t_i],

whose marginal at t_i is the chain's marginal exactly, so a network trained with
`ddpm_loss` on integer steps is a score model of this SDE at those times.

Also here: the linear and cosine beta schedules, Ho et al.'s L_simple with eps, x0
or v targets, and DDPM's ancestral sampler (Algorithm 2) for any SDE.
"""
import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genjax.core import check_int
from genjax.diffusion.parameterization import eps_from_score_value, v_from_x0_eps_value
from genjax.diffusion.sde import SDE, broadcast_to_batch, initial_noise

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("posterior", "beta")
# Times within this fraction of a grid step of t_i count as t_i when picking the
# interval of beta(t) (float32 round-off of i / N); the left interval is taken there,
# the one a reverse step from t_i crosses.
_GRID_TOL = 1e-3


def _check_num_timesteps(num_timesteps, name: str = "num_timesteps") -> int:
    return check_int(name, num_timesteps, 1)


# ---- schedules --------------------------------------------------------------------------


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_i rising linearly from beta_start to beta_end (Ho et al. 2020, sec. 4).

    Float64 NumPy array of shape (num_timesteps,).
    """
    n = _check_num_timesteps(num_timesteps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, beta_end={beta_end!r}")
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)


def cosine_alpha_bar(t, s: float = 0.008):
    """abar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi / 2) (Nichol & Dhariwal 2021, eq. 17)."""
    f = lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2
    return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """beta_i = min(1 - abar(t_i) / abar(t_{i-1}), max_beta) with the cosine abar of
    `cosine_alpha_bar` on t_i = i / N (Nichol & Dhariwal 2021, eq. 17 and the clipping
    that follows it, which keeps beta_N < 1 where abar(1) = 0).

    Float64 NumPy array of shape (num_timesteps,).
    """
    n = _check_num_timesteps(num_timesteps)
    if not s > 0.0:
        raise ValueError(f"s must be > 0, got {s!r}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    abar = cosine_alpha_bar(np.arange(n + 1) / n, s)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_schedule(name: str, num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    """The betas of the schedule `name` in SCHEDULES; kwargs go to its function."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps, **kwargs)


# ---- the SDE ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiscreteVPSDE(SDE):
    """The VP SDE whose marginals at t_i = i / N are DDPM's (see the module doc).

    betas: the schedule beta_1..beta_N, each in (0, 1); stored as a tuple of floats
    so the SDE is hashable (a valid jit static argument) and compares by value.
    Tables are kept in float64 NumPy and enter traced code as float32 constants.

    beta(t) jumps at every grid point, so ODE solvers lose their order across the
    jumps: on a 2-D mixture with the exact score, the adaptive probability-flow solve
    at rtol = 1e-5 takes ~1150-1400 steps here against ~170 for `VPSDE`.
    `ancestral_sample` steps along the grid and never straddles a jump.
    """

    betas: tuple
    _log_abar: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}")
        if not np.all((betas > 0.0) & (betas < 1.0)):
            raise ValueError(f"every beta must lie in (0, 1); got min {betas.min()!r}, max {betas.max()!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        # log abar at t_0..t_N; log1p keeps small betas exact.
        log_abar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
        object.__setattr__(self, "_log_abar", log_abar)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """abar_1..abar_N in float64, shape (N,)."""
        return np.exp(self._log_abar[1:])

    def _position(self, t):
        """(s, i) with s = t N clipped to [0, N] and i = floor(s) clipped to [0, N - 1]."""
        n = self.num_timesteps
        s = jnp.clip(jnp.asarray(t, jnp.float32) * n, 0.0, n)
        return s, jnp.clip(jnp.floor(s), 0, n - 1).astype(jnp.int32)

    def log_alpha_bar(self, t):
        """log abar(t), piecewise linear in t through log abar_i at t_i = i / N."""
        table = jnp.asarray(self._log_abar, jnp.float32)
        s, i = self._position(t)
        lo, hi = table[i], table[i + 1]
        return lo + (s - i) * (hi - lo)

    def beta(self, t):
        """beta(t) = -d log abar / dt = -N log(1 - beta_i) on (t_{i-1}, t_i]."""
        n = self.num_timesteps
        s = jnp.asarray(t, jnp.float32) * n
        i = jnp.clip(jnp.ceil(s - _GRID_TOL), 1, n).astype(jnp.int32)
        rates = jnp.asarray(-n * np.log1p(-np.asarray(self.betas)), jnp.float32)
        return rates[i - 1]

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * broadcast_to_batch(beta, x) * x, jnp.sqrt(beta)

    def marginal_coeffs(self, t):
        log_abar = self.log_alpha_bar(t)
        return jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))

    def prior_std(self):
        return 1.0

    def _step_beta(self, t, dt):
        """1 - abar(t) / abar(t - dt): the chain's beta_i when [t - dt, t] is a grid step."""
        return -jnp.expm1(self.log_alpha_bar(t) - self.log_alpha_bar(jnp.maximum(t - dt, 0.0)))

    def discretize(self, x, t, dt):
        # DDPM's own chain over [t - dt, t] (Song et al. 2021, eq. 47), exact on the grid.
        beta_i = self._step_beta(t, dt)
        f = (jnp.sqrt(1.0 - broadcast_to_batch(beta_i, x)) - 1.0) * x
        return f, jnp.sqrt(beta_i)

    def langevin_alpha(self, t, dt):
        return 1.0 - self._step_beta(t, dt)


# ---- training loss ------------------------------------------------------------------------


def _check_prediction(prediction: str):
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def _default_steps(sde: SDE, num_steps, fallback):
    if num_steps is None:
        num_steps = getattr(sde, "num_timesteps", fallback)
    return num_steps


def ddpm_loss(key, sde: SDE, pred_fn: Callable, x0, *, prediction: str = "eps", num_timesteps: int | None = None):
    """Ho et al. 2020's L_simple (eq. 14) with an eps, x0 or v target.

    i ~ U{1..N}, t = i / N, x_t = alpha(t) x0 + sigma(t) eps with (alpha, sigma) from
    `sde.marginal_coeffs`; the target is eps, x0, or v = alpha eps - sigma x0
    (Salimans & Ho 2022, sec. 4). pred_fn(x_t, t) takes t of shape (B,). The loss is
    the per-example mean of the squared error over dimensions. num_timesteps defaults
    to `sde.num_timesteps` (a `DiscreteVPSDE`); other SDEs need it given.
    Returns (loss_B, t_B).
    """
    _check_prediction(prediction)
    n = _default_steps(sde, num_timesteps, None)
    if n is None:
        raise ValueError("num_timesteps must be given for an SDE without a num_timesteps property")
    n = _check_num_timesteps(n)
    t_key, z_key = jax.random.split(key)
    batch = x0.shape[0]
    i = jax.random.randint(t_key, (batch,), 1, n + 1)
    t = i.astype(x0.dtype) / n
    z = jax.random.normal(z_key, x0.shape, x0.dtype)
    alpha, sigma = sde.marginal_coeffs(t)
    x_t = broadcast_to_batch(alpha, x0) * x0 + broadcast_to_batch(sigma, x0) * z
    if prediction == "eps":
        target = z
    elif prediction == "x0":
        target = x0
    else:
        target = v_from_x0_eps_value(x0, z, x_t, alpha, sigma)
    residual = jnp.reshape(pred_fn(x_t, t) - target, (batch, -1))
    return jnp.mean(residual**2, axis=1), t


# ---- ancestral sampling -------------------------------------------------------------------


class AncestralCoeffs(NamedTuple):
    """Per-step arrays of `ancestral_coeffs`, shape (n,), in sampling order t_n, ..., t_1."""

    t: jax.Array
    x_coef: jax.Array
    eps_coef: jax.Array
    noise_std: jax.Array


def ancestral_coeffs(sde: SDE, num_steps: int, variance: str = "posterior"):
    """Coefficients of x_s = x_coef x_t - eps_coef eps_hat + noise_std z, s = t - 1/n.

    With alpha_{t|s} = alpha_t / alpha_s and r = exp(2 (lambda_t - lambda_s)),
    lambda = log(alpha / sigma), the DDPM posterior q(x_s | x_t, x0) with x0 from
    eps_hat (Kingma et al. 2021, VDM eq. 8-9; Ho et al. 2020, eq. 6-7) has mean
    (x_t - (1 - r) sigma_t eps_hat) / alpha_{t|s} and variance (1 - r) sigma_s^2;
    the forward step's variance is (1 - r) sigma_t^2. For a VP SDE (alpha^2 + sigma^2
    = 1) these are Ho et al.'s Algorithm 2: 1/sqrt(alpha_i), (1 - alpha_i) /
    (sqrt(alpha_i) sqrt(1 - abar_i)), beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i)
    beta_i ("posterior") or beta_i = 1 - alpha_i ("beta"). 1 - r is computed with
    expm1 so small steps keep their precision. The last step adds no noise.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")
    n = _check_num_timesteps(num_steps, "num_steps")
    i = jnp.arange(n, 0, -1, dtype=jnp.float32)
    t, s = i / n, (i - 1.0) / n
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    alpha_s, sigma_s = sde.marginal_coeffs(s)
    # lambda_s = +inf where sigma_s = 0 (s = 0): then r = 0, as it should.
    lam_t = jnp.log(alpha_t) - jnp.log(sigma_t)
    lam_s = jnp.log(alpha_s) - jnp.log(sigma_s)
    one_minus_r = -jnp.expm1(2.0 * (lam_t - lam_s))
    x_coef = alpha_s / alpha_t
    eps_coef = x_coef * one_minus_r * sigma_t
    std = jnp.sqrt(one_minus_r) * (sigma_s if variance == "posterior" else sigma_t)
    std = std.at[-1].set(0.0)
    return AncestralCoeffs(t, x_coef, eps_coef, std)


def ancestral_sample(
    key,
    sde: SDE,
    score_fn: Callable,
    shape,
    num_steps: int | None = None,
    variance: str = "posterior",
    x_init=None,
):
    """DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2) on the grid t_i = i / n.

    x_{i-1} = (x_i - (1 - alpha_i) / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i) + sigma_i z
    with eps_hat = -sigma(t_i) score_fn(x_i, t_i), sigma_i^2 = beta_tilde_i ("posterior")
    or beta_i ("beta"), and no noise at the last step, so it returns the denoised
    x_0 prediction. Written through `ancestral_coeffs`, so it runs on any SDE (for
    non-VP ones, as the VDM posterior). num_steps defaults to `sde.num_timesteps`
    when the SDE has it, else 1000. NFE = num_steps.
    """
    n = _check_num_timesteps(_default_steps(sde, num_steps, 1000), "num_steps")
    init_key, noise_key = jax.random.split(key)
    x = initial_noise(init_key, sde, shape, x_init)
    c = ancestral_coeffs(sde, n, variance)
    alphas, sigmas = sde.marginal_coeffs(c.t)

    def step(x, inputs):
        k, t, alpha_t, sigma_t, x_coef, eps_coef, std = inputs
        t_N = jnp.full((x.shape[0],), t, x.dtype)
        eps_hat = eps_from_score_value(score_fn(x, t_N), x, alpha_t, sigma_t)
        z = jax.random.normal(jax.random.fold_in(noise_key, k), x.shape, x.dtype)
        return x_coef * x - eps_coef * eps_hat + std * z, None

    inputs = (jnp.arange(n), c.t, alphas, sigmas, c.x_coef, c.eps_coef, c.noise_std)
    x, _ = jax.lax.scan(step, x, inputs)
    return x
