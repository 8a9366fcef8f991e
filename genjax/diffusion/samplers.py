"""Samplers for score-based diffusion models (Song et al. 2021, sec. 4).

Every sampler takes the forward `sde` and a score function `score_fn(x, t)` (x of
`shape`, t of shape (shape[0],)) and only calls the SDE's interface methods, so it
runs on any SDE. Time runs from 1 (noise) down to `eps` (data).

Every sampler returns the samples, except `ode_sample`: a solve of the
probability-flow ODE through `genjax.integrate`, it returns (samples, nfe) like
every solver there (an adaptive solve's count is known only once it has run).
`Model.sample` (`genjax.diffusion.model`) returns the samples whatever the sampler.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from genjax import integrate, mcmc
from genjax.diffusion.sde import SDE, broadcast_to_batch, initial_noise


def _per_example_norm(v):
    return jnp.sqrt(jnp.sum(jnp.reshape(v, (v.shape[0], -1)) ** 2, axis=1))


def euler_maruyama_predictor(key, rsde, x, t, dt):
    """x_{t-dt} = x - f_rev dt + g sqrt(dt) z for the reverse SDE (Song et al. 2021, eq. 6)."""
    drift, diffusion = rsde.sde(x, t)
    x_mean = x - drift * broadcast_to_batch(dt, x)
    noise = broadcast_to_batch(diffusion * jnp.sqrt(dt), x) * jax.random.normal(key, x.shape)
    return x_mean + noise, x_mean


def reverse_diffusion_predictor(key, rsde, x, t, dt):
    """The reverse of the SDE's own discretisation (Song et al. 2021, eq. 46-47)."""
    f, G = rsde.discretize(x, t, dt)
    x_mean = x - f
    return x_mean + broadcast_to_batch(G, x) * jax.random.normal(key, x.shape), x_mean


def langevin_corrector(key, rsde, x, t, dt, *, snr):
    """One step of annealed Langevin dynamics with the step size set by the
    signal-to-noise ratio (Song et al. 2021, Algorithm 4/5).

    The norms are averaged over the batch, as in the paper's code: per-example
    norms blow the step up wherever one sample's score is near zero, which in low
    dimensions happens often.

    The step size eps_i = 2 alpha_i (snr ||z|| / ||score||)^2 needs the step's noise z
    and score; the step itself is `mcmc.langevin_step` with the same key, so it draws
    the same z, and it is given the score already computed here.
    """
    forward = rsde.forward
    score = rsde.score_fn(x, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    alpha = forward.langevin_alpha(t, dt)
    ratio = jnp.mean(_per_example_norm(z)) / jnp.mean(_per_example_norm(score))
    step = 2.0 * alpha * (snr * ratio) ** 2
    return mcmc.langevin_step(key, lambda _: score, x, step)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_predictor,
    "reverse_diffusion": reverse_diffusion_predictor,
}
CORRECTORS = {"langevin": langevin_corrector}


def _choose(kind: str, name, table):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
    return table[name]


def pc_sample(
    key,
    sde: SDE,
    score_fn: Callable,
    shape,
    num_steps: int = 1000,
    predictor: str = "euler_maruyama",
    corrector: str | None = None,
    snr: float = 0.16,
    eps: float = 1e-3,
    corrector_steps: int = 1,
    x_init=None,
):
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1).

    Each of `num_steps` steps moves t_i -> t_{i+1} on a uniform grid from 1 to eps
    with the predictor, then runs `corrector_steps` corrector steps at t_{i+1}.
    Returns the noise-free mean of the last update, as is customary.
    """
    predict = _choose("predictor", predictor, PREDICTORS)
    correct = None if corrector is None else functools.partial(
        _choose("corrector", corrector, CORRECTORS), snr=snr
    )
    init_key, loop_key = jax.random.split(key)
    x = initial_noise(init_key, sde, shape, x_init)
    rsde = sde.reverse(score_fn, probability_flow=False)
    ts = jnp.linspace(sde.T, eps, num_steps + 1)
    batch = shape[0]

    def step(carry, i):
        x, _ = carry
        k_pred, k_corr = jax.random.split(jax.random.fold_in(loop_key, i))
        t = jnp.full((batch,), ts[i])
        dt = jnp.full((batch,), ts[i] - ts[i + 1])
        x, x_mean = predict(k_pred, rsde, x, t, dt)
        if correct is not None:
            t_next = jnp.full((batch,), ts[i + 1])
            for j in range(corrector_steps):
                x, x_mean = correct(jax.random.fold_in(k_corr, j), rsde, x, t_next, dt)
        return (x, x_mean), None

    (_, x_mean), _ = jax.lax.scan(step, (x, x), jnp.arange(num_steps))
    return x_mean


def probability_flow(sde: SDE, score_fn: Callable) -> Callable:
    """The probability-flow ODE's vector field f(x, t) with scalar t (eq. 13)."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vector_field(x, t):
        return rsde.sde(x, jnp.full((x.shape[0],), t, dtype=x.dtype))[0]

    return vector_field


def ode_sample(
    key,
    sde: SDE,
    score_fn: Callable,
    shape,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-3,
    method: str = "adaptive",
    num_steps: int | None = None,
    x_init=None,
):
    """Solves the probability-flow ODE from t=1 to t=eps (Song et al. 2021, sec. 4.3).

    Adaptive by default (diffrax Tsit5 under jit, step size set by the worst
    sample's error); fixed-step methods from `genjax.integrate` with num_steps.
    Returns (samples, number of score evaluations).
    """
    x = initial_noise(key, sde, shape, x_init)
    return integrate.solve_ode(
        probability_flow(sde, score_fn), x, sde.T, eps,
        method=method, num_steps=num_steps, rtol=rtol, atol=atol,
    )


# The fast deterministic solvers (DDIM, DPM-Solver++, EDM Heun) live in `solvers`;
# they take the same (key, sde, score_fn, shape, ..., x_init=) arguments.
from genjax.diffusion.solvers import ddim_sample, dpm_solver_sample, edm_heun_sample  # noqa: E402,F401
