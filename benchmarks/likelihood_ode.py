"""Probability-flow ODE likelihood: genjax's jitted adaptive solve (diffrax Tsit5,
all on device) against a host-side scipy `solve_ivp` RK45 loop that calls the same
jitted drift-and-divergence function each step (the approach of the original
score_sde code). Same model, same tolerances, same data.

    python -m benchmarks.likelihood_ode [--workdir runs/demo] [--num 1000] [--repeats 3] [--quick]

With --workdir, the EMA score model of that trained score-SDE run, built from the
run's own saved config (`experiments.run_config.load_run`), on its held-out data;
otherwise the exact score of an 8-component Gaussian mixture (no training needed;
a trained network costs more per evaluation and its ODE takes more steps). Prints
both times, their ratio and the NLL difference. --quick: 100 examples, 2 repeats.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate as scipy_integrate

from benchmarks.common import device_description, no_run_note, time_fn, trained_config
from genjax import integrate
from genjax.data import toy2d
from genjax.data.toy2d import exact_score_fn
from genjax.diffusion import samplers
from genjax.diffusion import sde as sde_lib


def load_score_fn(workdir):
    """(sde, EMA score function, held-out sampler) of a trained score-SDE run of
    experiments.main, built from the run's saved config."""
    from experiments import registry
    from experiments.experiment import Experiment
    from genjax.diffusion.model import make_score_fn

    config = trained_config(workdir, "score_sde")
    exp = Experiment(config)
    state = exp.restore(workdir)
    sde, net = registry.build_sde_and_net(config, exp.source)
    score_fn_of = make_score_fn(sde, net, prediction=config.model.get("prediction", "eps"),
                                num_classes=exp.source.num_classes)
    return sde, score_fn_of(state.ema_params), exp.source.held_out


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
    # Full float32 matmuls on GPUs too (not TF32): the benchmark compares ODE solvers.
    jax.config.update("jax_default_matmul_precision", "highest")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="a trained score-SDE run (default: an exact score)")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.num, args.repeats = 100, 2
    eps = 1e-5
    print(f"device: {device_description()}")
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
        print(no_run_note("--workdir", "the exact score of an 8-component Gaussian mixture, no network",
                          "a trained network costs more per evaluation and its ODE takes more steps"))

    def ours_fn(norm, tol):
        return jax.jit(lambda x: integrate.ode_log_likelihood(
            None, samplers.probability_flow(sde, score_fn), x, eps, sde.T, sde.prior_log_prob,
            rtol=tol, atol=tol, error_norm=norm)[::2])

    reference, _ = ours_fn("batch_max", args.tol * 0.1)(x)  # 10x tighter: the yardstick
    rows = []
    for norm in ("batch_max", "rms"):
        fn = ours_fn(norm, args.tol)
        seconds = time_fn(fn, x, repeats=args.repeats)
        logp, nfe = fn(x)
        rows.append((f"genjax jit, Tsit5, {norm} norm", seconds, int(nfe), logp))

    scipy_log_likelihood(sde, score_fn, x[:2], rtol=args.tol, atol=args.tol, eps=eps)  # compile
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        logp_ref, nfe_ref = scipy_log_likelihood(sde, score_fn, x, rtol=args.tol, atol=args.tol, eps=eps)
        times.append(time.perf_counter() - t0)
    rows.append(("scipy solve_ivp RK45 on host", float(np.median(times)), nfe_ref, logp_ref))

    print(f"model: {source}; {args.num} examples; rtol = atol = {args.tol}; median of {args.repeats} "
          f"after warm-up; errors against the same ODE solved at 10x tighter tolerance")
    print(f"{'method':34s} {'seconds':>8s} {'NFE':>6s} {'NLL':>8s} {'max |err| per example':>22s}")
    for name, seconds, nfe, logp in rows:
        err = float(jnp.max(jnp.abs(logp - reference)))
        print(f"{name:34s} {seconds:8.3f} {nfe:6d} {-float(jnp.mean(logp)):8.4f} {err:22.2e}")
    scipy_seconds = rows[-1][1]
    print(f"speed-up over scipy: batch_max norm {scipy_seconds / rows[0][1]:.2f}x, "
          f"rms norm (the same error control as scipy) {scipy_seconds / rows[1][1]:.2f}x; "
          f"|NLL difference| to scipy {abs(float(jnp.mean(rows[0][3] - logp_ref))):.1e} nats")


if __name__ == "__main__":
    main()
