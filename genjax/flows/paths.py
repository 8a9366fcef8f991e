"""Probability paths of flow matching and their schedulers (Lipman et al. 2023, sec. 4).

Time convention (that of every module in `genjax.flows`): t = 0 is the standard
normal noise x0 and t = 1 is the data x1.

* a *scheduler* gives alpha(t), sigma(t) and their time derivatives
  (`CondOTScheduler`, `CosineScheduler`, `VPScheduler`);
* an *affine probability path* `AffinePath(scheduler)` defines the conditional
  path x_t = alpha_t x1 + sigma_t x0 and its velocity
  u_t = alpha'_t x1 + sigma'_t x0 (Lipman et al. 2023, eq. 11 and Thm. 3).

A path is anything with `sample_xt(x0, x1, t)` and `target_velocity(x0, x1, t)`;
the loss (`genjax.flows.matching`) calls nothing else.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# ----------------------------------------------------------------------------- schedulers


@dataclasses.dataclass(frozen=True)
class CondOTScheduler:
    """Conditional optimal-transport schedule (Lipman et al. 2023, eq. 20):
    alpha_t = t, sigma_t = 1 - (1 - sigma_min) t.

    sigma_min = 0 is the straight line of rectified flow (Liu et al. 2023).
    """

    sigma_min: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"CondOTScheduler: sigma_min must lie in [0, 1); got {self.sigma_min}")

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return jnp.ones_like(t)

    def d_sigma(self, t):
        return jnp.full_like(t, -(1.0 - self.sigma_min))


@dataclasses.dataclass(frozen=True)
class CosineScheduler:
    """Variance-preserving cosine schedule: alpha_t = sin(pi t / 2),
    sigma_t = cos(pi t / 2), so alpha_t^2 + sigma_t^2 = 1 (Nichol & Dhariwal 2021
    in this module's time direction; the "trigonometric" path of Albergo &
    Vanden-Eijnden 2023)."""

    def alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * t)

    def sigma(self, t):
        return jnp.cos(0.5 * jnp.pi * t)

    def d_alpha(self, t):
        return 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t)

    def d_sigma(self, t):
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)


@dataclasses.dataclass(frozen=True)
class VPScheduler:
    """The VP-SDE's marginal coefficients as a flow-matching schedule.

    With diffusion time s = 1 - (1 - eps) t (s runs from 1 at the noise end to
    eps at the data end), alpha = exp(-s^2 (beta_max - beta_min) / 4 - s beta_min / 2)
    and sigma = sqrt(1 - alpha^2) (Song et al. 2021, eq. 33; Lipman et al. 2023,
    eq. 19). sigma'(t) ~ 1/sigma(t) blows up at s = 0, hence eps > 0: at t = 1 the
    path stops at alpha ~ 1, sigma ~ sqrt(beta_min eps), and at t = 0 alpha is
    small but not 0 (about 7e-3 for the defaults).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3

    def __post_init__(self):
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ValueError(
                f"VPScheduler: need 0 < beta_min <= beta_max; got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"VPScheduler: eps must lie in (0, 1); got {self.eps}")

    def _s(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def _log_alpha(self, s):
        return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def alpha(self, t):
        return jnp.exp(self._log_alpha(self._s(t)))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(self._s(t))))

    def d_alpha(self, t):
        s = self._s(t)
        # d log alpha / ds = -beta(s) / 2, and ds/dt = -(1 - eps).
        beta = self.beta_min + s * (self.beta_max - self.beta_min)
        return self.alpha(t) * 0.5 * beta * (1.0 - self.eps)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)


# ----------------------------------------------------------------------------- paths


def _per_example(coeff_N, x):
    """Broadcasts a per-example coefficient (N,) against x of shape (N, ...)."""
    return jnp.reshape(coeff_N, coeff_N.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class AffinePath:
    """Affine conditional probability path (Lipman et al. 2023, sec. 4):

        x_t = alpha_t x1 + sigma_t x0,    u_t = alpha'_t x1 + sigma'_t x0
    (eq. 11 and Thm. 3),

    with x0 ~ N(0, I) the noise, x1 the data and t of shape (N,). `scheduler`
    is any object with alpha, sigma, d_alpha, d_sigma of t.
    """

    scheduler: Any

    def sample_xt(self, x0, x1, t):
        s = self.scheduler
        return _per_example(s.alpha(t), x1) * x1 + _per_example(s.sigma(t), x0) * x0

    def target_velocity(self, x0, x1, t):
        s = self.scheduler
        return _per_example(s.d_alpha(t), x1) * x1 + _per_example(s.d_sigma(t), x0) * x0


def cond_ot_path(sigma_min: float = 0.0) -> AffinePath:
    """The conditional-OT / rectified-flow straight line (Lipman et al. 2023, eqs. 20-23)."""
    return AffinePath(CondOTScheduler(sigma_min))


def vp_path(scheduler=None) -> AffinePath:
    """A variance-preserving path; the cosine schedule unless `scheduler` is given."""
    return AffinePath(CosineScheduler() if scheduler is None else scheduler)
