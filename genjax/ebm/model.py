"""An energy-based model as a `genjax.core.Model`: p(x) = exp(-E(x)) / Z on a box.

`make_ebm_model(energy_net, data_shape=..., box=..., objective=...)` trains one
energy network `energy_net.apply(params, x) -> (N,)` by one of three objectives
that never need Z (`genjax.ebm.losses`):

    "cd"   contrastive divergence with K short-run SGLD steps per update, the
           chains started from a persistent replay buffer (Du & Mordatch 2019,
           Algorithm 1); the buffer is the model's state (`init_model_state`)
    "ssm"  sliced score matching, variance-reduced (Song et al. 2019)
    "dsm"  denoising score matching at noise level sigma (Vincent 2011)

The box [low, high] (every coordinate) is the model's support: SGLD chains are
clamped to it, MALA rejects proposals outside it, and on 2-D data Z is the
integral of exp(-E) over it by quadrature (`genjax.ebm.partition`), so
`log_prob` is the exact log-density of the normalised model up to the quadrature
error. For other data there is no `log_prob` (`partition.quadrature_note` says
why) and the family reports sample metrics only.

Sampling starts chains from uniform noise on the box: "mala", Metropolis-adjusted
Langevin on exp(-E) (exact stationary law; for long runs), or "sgld", the
training sampler (short runs, e.g. images).
"""
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax import mcmc
from genjax.core import Model, check_int, check_shape
from genjax.ebm import losses, partition, replay

OBJECTIVES = ("cd", "ssm", "dsm")
SAMPLERS = ("mala", "sgld")


def energy_fn_of(energy_net: nn.Module, params) -> Callable:
    """x (N, ...) -> E(x) (N,)."""
    return lambda x: energy_net.apply(params, x)


def box_log_density(energy_fn: Callable, low: float, high: float) -> Callable:
    """x -> -E(x) inside the box (every coordinate in [low, high]), -inf outside: the
    unnormalised log-density of the model, as MALA reads it."""

    def log_density(x):
        inside_N = jnp.all(jnp.reshape((x >= low) & (x <= high), (x.shape[0], -1)), axis=1)
        return jnp.where(inside_N, -energy_fn(x), -jnp.inf)

    return log_density


def mala_from_noise(key, energy_fn: Callable, num: int, *, data_shape, box, step_size: float, num_steps: int):
    """`num` MALA chains (`genjax.mcmc.mala_sample`) on exp(-E) restricted to the box,
    started from uniform noise on it. Returns (x, acceptance_rate)."""
    low, high = partition.check_box(box)
    k_init, k_run = jax.random.split(key)
    x0 = replay.uniform_noise(k_init, (num,) + tuple(data_shape), low, high)
    return mcmc.mala_sample(k_run, box_log_density(energy_fn, low, high), x0,
                            step_size=step_size, num_steps=num_steps)


def make_ebm_model(
    energy_net: nn.Module,
    *,
    data_shape: tuple,
    box: tuple[float, float],
    objective: str = "cd",
    # contrastive divergence (Du & Mordatch 2019)
    buffer_size: int = 10_000,
    reinit_prob: float = 0.05,
    sgld_steps: int = 20,
    sgld_step_size: float = 0.01,
    sgld_noise: float | None = None,
    clip_grad: float | None = None,
    alpha: float = 1.0,
    # sliced score matching (Song et al. 2019)
    num_projections: int = 1,
    variance_reduced: bool = True,
    # denoising score matching (Vincent 2011)
    sigma: float = 0.05,
    # sampling and likelihood
    sampler: str = "mala",
    sample_steps: int = 1000,
    sample_step_size: float = 0.01,
    quadrature_resolution: int = 512,
) -> Model:
    """An energy-based model (module docstring) for data of shape `data_shape`.

    CD: each update runs `sgld_steps` SGLD steps x' = x - h grad E(x) + s z
    (h = sgld_step_size, s = sgld_noise; None means s = sqrt(2h), the Langevin
    diffusion whose stationary law is exp(-E); Du & Mordatch's images use a far
    smaller s) on a batch of chains drawn from a buffer of `buffer_size` states, a
    fraction `reinit_prob` restarted from noise; loss
    `losses.contrastive_divergence_loss` with regulariser weight `alpha`.
    SSM: `num_projections` Gaussian projections, SSM-VR when `variance_reduced`.
    DSM: noise level `sigma`.

    sample(params, key, num, *, model_state=None, method=sampler, num_steps=None,
    step_size=None, noise_scale=None) runs fresh chains from noise (the buffer is
    not used, so samples show what the energy generates on its own) for num_steps
    (default sample_steps) steps: "mala" with step size sample_step_size, "sgld"
    with the training chains' step size and noise unless given.
    log_prob(params, key, x, *, model_state=None, resolution=None): exact (quadrature)
    log-density on 2-D data; None for other shapes.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown EBM training objective {objective!r}; expected one of {OBJECTIVES}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown EBM sampler {sampler!r}; expected one of {SAMPLERS}")
    data_shape = tuple(data_shape)
    low, high = partition.check_box(box)
    for name, value in (("sgld_step_size", sgld_step_size), ("sample_step_size", sample_step_size),
                        ("sigma", sigma)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not 0.0 <= reinit_prob <= 1.0:
        raise ValueError(f"reinit_prob must lie in [0, 1], got {reinit_prob!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    if sgld_noise is not None and not sgld_noise >= 0:
        raise ValueError(f"sgld_noise must be >= 0 (or None for sqrt(2 sgld_step_size)), got {sgld_noise!r}")
    sgld_steps = check_int("sgld_steps", sgld_steps, 1)
    buffer_size = check_int("buffer_size", buffer_size, 1)
    num_projections = check_int("num_projections", num_projections, 1)
    sample_steps = check_int("sample_steps", sample_steps, 1)
    quadrature_resolution = check_int("quadrature_resolution", quadrature_resolution, 2)
    noise = math.sqrt(2.0 * sgld_step_size) if sgld_noise is None else float(sgld_noise)

    def check_batch(x):
        check_shape("batch", x, (None,) + data_shape)

    def init(key, example_batch):
        check_batch(example_batch)
        return energy_net.init(key, example_batch[:1])

    def run_sgld(key, energy_fn, x_init, step_size, noise_scale, num_steps):
        return mcmc.sgld_sample(key, jax.grad(lambda x: jnp.sum(energy_fn(x))), x_init,
                                step_size=step_size, noise_scale=noise_scale, num_steps=num_steps,
                                clip_grad=clip_grad, clip_x=(low, high))

    def init_model_state(key, example_batch):
        check_batch(example_batch)
        return replay.init_buffer(key, buffer_size, data_shape, low=low, high=high)

    def cd_loss(params, key, x, model_state):
        energy_fn = energy_fn_of(energy_net, params)
        k_draw, k_sgld = jax.random.split(key)
        slots_B, x_init, fresh_B = replay.draw(k_draw, model_state, x.shape[0], reinit_prob=reinit_prob,
                                               low=low, high=high)
        # the chains follow the current energy but are constants for the parameter gradient
        frozen = energy_fn_of(energy_net, jax.lax.stop_gradient(params))
        x_neg = jax.lax.stop_gradient(run_sgld(k_sgld, frozen, x_init, sgld_step_size, noise, sgld_steps))
        loss, metrics = losses.contrastive_divergence_loss(energy_fn, x, x_neg, alpha=alpha)
        metrics["reinit_fraction"] = jnp.mean(fresh_B.astype(jnp.float32))
        return loss, (metrics, replay.store(model_state, slots_B, x_neg))

    def ssm_loss(params, key, x):
        score_fn = losses.score_of(energy_fn_of(energy_net, params))
        return losses.sliced_score_matching_loss(score_fn, key, x, num_projections=num_projections,
                                                 variance_reduced=variance_reduced)

    def dsm_loss(params, key, x):
        score_fn = losses.score_of(energy_fn_of(energy_net, params))
        return losses.denoising_score_matching_loss(score_fn, key, x, sigma=sigma)

    def sample(params, key, num, *, model_state=None, method=sampler, num_steps=None, step_size=None,
               noise_scale=None):
        del model_state  # fresh chains from noise
        if method not in SAMPLERS:
            raise ValueError(f"unknown EBM sampler {method!r}; expected one of {SAMPLERS}")
        num = check_int("num", num, 1)
        num_steps = sample_steps if num_steps is None else num_steps
        energy_fn = energy_fn_of(energy_net, params)
        if method == "mala":
            x, _ = mala_from_noise(key, energy_fn, num, data_shape=data_shape, box=(low, high),
                                   step_size=sample_step_size if step_size is None else step_size,
                                   num_steps=num_steps)
            return x
        k_init, k_run = jax.random.split(key)
        x0 = replay.uniform_noise(k_init, (num,) + data_shape, low, high)
        return run_sgld(k_run, energy_fn, x0, sgld_step_size if step_size is None else step_size,
                        noise if noise_scale is None else noise_scale, num_steps)

    def log_prob(params, key, x, *, model_state=None, resolution=None):
        """Exact log p(x) = -E(x) - log Z_B (nats), Z_B by quadrature; -inf outside the box."""
        del key, model_state
        check_batch(x)
        res = quadrature_resolution if resolution is None else resolution
        return partition.log_prob(energy_fn_of(energy_net, params), x, box=(low, high), resolution=res)

    loss = {"cd": cd_loss, "ssm": ssm_loss, "dsm": dsm_loss}[objective]
    return Model(
        init=init,
        loss=loss,
        sample=sample,
        log_prob=log_prob if partition.quadrature_note(data_shape) is None else None,
        init_model_state=init_model_state if objective == "cd" else None,
    )
