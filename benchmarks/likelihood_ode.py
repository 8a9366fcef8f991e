"""Probability-flow ODE likelihood: genjax's jitted adaptive solve (diffrax Tsit5,
all on device) against a host-side scipy `solve_ivp` RK45 loop that calls the same
jitted drift-and-divergence function each step (the approach of the original
score_sde code). Same model, same tolerances, same data.

    python benchmarks/likelihood_ode.py [--workdir runs/demo] [--num 1000]

With --workdir the trained score model of that run is used; otherwise the exact
score of an 8-component Gaussian mixture. Prints both times, their ratio and the
NLL difference.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate as scipy_integrate

from benchmarks.common import device_description, time_fn
from genjax import integrate
from genjax.data import toy2d
from genjax.diffusion import likelihood, samplers
from genjax.diffusion import sde as sde_lib
from genjax.diffusion.losses import score_from_noise_prediction
from genjax.diffusion.oracle import exact_score_fn


def load_score_fn(workdir):
    """The EMA score function of a run of experiments.main, and its held-out data."""
    import json

    import ml_collections

    from experiments import main as experiment_main
    from experiments import registry
    from genjax.nn.mlp import TimeMLP

    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    exp, state = experiment_main._restore(config, workdir)
    net = TimeMLP(hidden=tuple(config.model.hidden), time_embedding=config.model.time_embedding)
    sde = registry.build_sde(config)
    eps_fn = lambda x, t: net.apply(state.ema_params, x, t)
    return sde, score_from_noise_prediction(sde, eps_fn), exp.held_out


def scipy_log_likelihood(sde, score_fn, x, *, rtol, atol, eps):
    """score_sde's likelihood: RK45 on the host over the flattened batch."""
    vector_field = samplers.probability_flow(sde, score_fn)
    shape = x.shape

    @jax.jit
    def drift_and_div(state, t):
        xs = state[: x.size].reshape(shape)
        dx, div = integrate.value_and_divergence(lambda y: vector_field(y, t), xs)
        return jnp.concatenate([dx.reshape(-1), div])

    def ode_fn(t, state):
        return np.asarray(drift_and_div(jnp.asarray(state, jnp.float32), jnp.float32(t)), np.float64)

    init = np.concatenate([np.asarray(x).reshape(-1), np.zeros(shape[0])])
    sol = scipy_integrate.solve_ivp(ode_fn, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    z = jnp.asarray(sol.y[: x.size, -1].reshape(shape), jnp.float32)
    delta = jnp.asarray(sol.y[x.size:, -1], jnp.float32)
    return sde.prior_log_prob(z) + delta, sol.nfev


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    eps = 1e-5
    if args.workdir:
        sde, score_fn, held_out = load_score_fn(args.workdir)
        x = held_out(args.num)
        source = f"trained model in {args.workdir}"
    else:
        sde = sde_lib.VPSDE()
        mixture = toy2d.gaussian_rings_mixture(num=8, radius=4.0, std=0.5)
        score_fn = exact_score_fn(sde, mixture)
        x = mixture.sample(jax.random.PRNGKey(0), args.num)
        source = "exact score of an 8-component mixture"

    ours = jax.jit(lambda x: likelihood.log_likelihood(
        jax.random.PRNGKey(0), sde, score_fn, x, rtol=args.tol, atol=args.tol, eps=eps))
    t_ours = time_fn(ours, x, repeats=args.repeats)
    logp_ours, nfe_ours = ours(x)

    scipy_log_likelihood(sde, score_fn, x[:2], rtol=args.tol, atol=args.tol, eps=eps)  # compile
    t0 = time.perf_counter()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        logp_ref, nfe_ref = scipy_log_likelihood(sde, score_fn, x, rtol=args.tol, atol=args.tol, eps=eps)
        times.append(time.perf_counter() - t0)
    t_ref = float(np.median(times))

    print(f"device: {device_description()}")
    print(f"model: {source}; {args.num} examples; rtol = atol = {args.tol}")
    print(f"genjax (jit, diffrax Tsit5, max norm): {t_ours:8.3f} s  NFE {int(nfe_ours)}  "
          f"NLL {-float(jnp.mean(logp_ours)):.4f} nats")
    print(f"scipy solve_ivp RK45 on host:          {t_ref:8.3f} s  NFE {nfe_ref}  "
          f"NLL {-float(jnp.mean(logp_ref)):.4f} nats")
    print(f"speed-up: {t_ref / t_ours:.2f}x   |NLL difference|: "
          f"{abs(float(jnp.mean(logp_ours - logp_ref))):.2e} nats (max per example "
          f"{float(jnp.max(jnp.abs(logp_ours - logp_ref))):.2e})")


if __name__ == "__main__":
    main()
