"""Forward SDEs dx = f(x, t) dt + g(t) dw on t in [0, 1], data at t=0, noise at t=1.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations": VE (eq. 30), VP (eq. 32) and sub-VP (eq. 34) SDEs. Each has the Gaussian
perturbation kernel x_t = alpha(t) x_0 + sigma(t) eps, so the samplers, losses and
likelihood only call the methods of `SDE`; `reverse` gives the reverse-time SDE
(eq. 6) or the probability-flow ODE (eq. 13) for any of them.
"""
import dataclasses
import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp


def broadcast_to_batch(v_N: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example scalar (N,) so it broadcasts against x of shape (N, ...)."""
    return jnp.reshape(v_N, v_N.shape + (1,) * (x.ndim - v_N.ndim))


def initial_noise(key, sde: "SDE", shape, x_init=None):
    """The sampler's starting point: `x_init` (checked against `shape`) or a prior draw."""
    if x_init is None:
        return sde.prior_sample(key, shape)
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}; expected {tuple(shape)}")
    return x_init


class SDE:
    """The interface every forward SDE implements.

    Subclasses define `sde`, `marginal_coeffs` and `prior_std`; the rest follows.
    All time arguments are arrays of shape (N,) (one time per example) or scalars.
    """

    T: float = 1.0

    def sde(self, x, t):
        """(drift f(x, t) of x's shape, diffusion g(t) of t's shape)."""
        raise NotImplementedError

    def marginal_coeffs(self, t):
        """(alpha(t), sigma(t)) with x_t = alpha x_0 + sigma eps."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior p_T = N(0, prior_std^2 I)."""
        raise NotImplementedError

    def marginal_prob(self, x0, t):
        """Mean and std of the perturbation kernel p_0t(x_t | x_0)."""
        alpha, sigma = self.marginal_coeffs(t)
        return broadcast_to_batch(alpha, x0) * x0, sigma

    def prior_sample(self, key, shape):
        return self.prior_std() * jax.random.normal(key, shape)

    def prior_log_prob(self, z):
        """Per-example log N(z; 0, prior_std^2 I) in nats."""
        dim = math.prod(z.shape[1:])
        s = self.prior_std()
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
        return -0.5 * dim * math.log(2 * math.pi * s * s) - 0.5 * sq / (s * s)

    def discretize(self, x, t, dt):
        """One-step discretisation x_{t+dt} = x + f + G z (Euler-Maruyama by default).

        Returns (f, G) with f of x's shape and G per example. Subclasses override it
        with their native discretisation (DDPM for VP, SMLD for VE).
        """
        drift, diffusion = self.sde(x, t)
        return drift * broadcast_to_batch(dt, x), diffusion * jnp.sqrt(dt)

    def langevin_alpha(self, t, dt):
        """The alpha_i that scales the Langevin corrector's step (Song et al. 2021, Alg. 5)."""
        return jnp.ones_like(t)

    def reverse(self, score_fn: Callable, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (eq. 6) or, with probability_flow, the ODE (eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """dx = [f - c g^2 score] dt + g' dw-bar, c = 1 (SDE) or 1/2 with g' = 0 (ODE).

    Time still runs forward in these formulas; samplers step from t to t - dt.
    """

    forward: SDE
    score_fn: Callable
    probability_flow: bool

    def _score(self, x, t):
        """score_fn(x, t), asserted to have x's shape: every sampler and the ODE
        likelihood reach the score through here, and a score of another shape
        (say (N, 1) for x of (N, D)) would broadcast into the drift silently."""
        score = self.score_fn(x, t)
        chex.assert_equal_shape([score, x], custom_message="score_fn(x, t) vs x")
        return score

    def sde(self, x, t):
        drift, diffusion = self.forward.sde(x, t)
        coef = 0.5 if self.probability_flow else 1.0
        g2 = broadcast_to_batch(diffusion**2, x)
        drift = drift - coef * g2 * self._score(x, t)
        return drift, (jnp.zeros_like(diffusion) if self.probability_flow else diffusion)

    def discretize(self, x, t, dt):
        f, G = self.forward.discretize(x, t, dt)
        coef = 0.5 if self.probability_flow else 1.0
        rev_f = f - coef * broadcast_to_batch(G**2, x) * self._score(x, t)
        return rev_f, (jnp.zeros_like(G) if self.probability_flow else G)


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving SDE, dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, with
    beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 32-33);
    the continuous limit of DDPM (Ho et al. 2020)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * broadcast_to_batch(beta, x) * x, jnp.sqrt(beta)

    def marginal_coeffs(self, t):
        log_alpha = self.log_alpha(t)
        return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

    def prior_std(self):
        return 1.0

    def discretize(self, x, t, dt):
        # DDPM's Markov chain with beta_i = beta(t) dt (Song et al. 2021, eq. 47).
        beta_i = self.beta(t) * dt
        f = (jnp.sqrt(1.0 - broadcast_to_batch(beta_i, x)) - 1.0) * x
        return f, jnp.sqrt(beta_i)

    def langevin_alpha(self, t, dt):
        return 1.0 - self.beta(t) * dt


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE, dx = -beta(t)/2 x dt + sqrt(beta(t)(1 - e^{-2 int_0^t beta})) dw
    (Song et al. 2021, eq. 34); its marginal variance is (1 - alpha^2)^2."""

    def sde(self, x, t):
        beta = self.beta(t)
        discount = -jnp.expm1(4.0 * self.log_alpha(t))
        return -0.5 * broadcast_to_batch(beta, x) * x, jnp.sqrt(beta * discount)

    def marginal_coeffs(self, t):
        log_alpha = self.log_alpha(t)
        return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

    def discretize(self, x, t, dt):
        return SDE.discretize(self, x, t, dt)

    def langevin_alpha(self, t, dt):
        return jnp.ones_like(t)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding SDE, dx = sqrt(d[sigma^2(t)]/dt) dw with
    sigma(t) = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021, eq. 30-31);
    the continuous limit of SMLD / NCSN (Song & Ermon 2019).

    The perturbation std is the exact sqrt(sigma(t)^2 - sigma_min^2) of the SDE
    started at t=0, so closed-form scores are exact at every t.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        g = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(x), g

    def marginal_coeffs(self, t):
        two_log_ratio_t = 2.0 * t * math.log(self.sigma_max / self.sigma_min)
        std = self.sigma_min * jnp.sqrt(jnp.expm1(two_log_ratio_t))
        return jnp.ones_like(t), std

    def prior_std(self):
        return math.sqrt(self.sigma_max**2 - self.sigma_min**2)

    def discretize(self, x, t, dt):
        # SMLD's chain: G_i = sqrt(sigma_i^2 - sigma_{i-1}^2) (Song et al. 2021, eq. 45).
        sigma_i, sigma_prev = self.sigma(t), self.sigma(jnp.maximum(t - dt, 0.0))
        sigma_prev = jnp.where(t - dt > 0, sigma_prev, 0.0)
        return jnp.zeros_like(x), jnp.sqrt(sigma_i**2 - sigma_prev**2)
