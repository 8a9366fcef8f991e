"""Fast samplers against the exact probability-flow ODE of Gaussian mixtures.

    python benchmarks/sampler_oracle.py [--workers 16] [--num 2000] [--quick]
        [--problems vp/rings2d ...] [--samplers dpm3m ...] [--discretizations logsnr ...]
        [--order-steps 40 80 160 320]

For each problem (SDE x mixture), sampler and time discretization, sweeps the number
of steps and measures the relative RMS error ||x - x_ref|| / ||x_ref|| against the
probability-flow ODE solved adaptively (Tsit5, rtol = atol = 1e-6) from the same
initial noise, with the exact score of the mixture. Prints, as markdown:

  1. the smallest NFE of the sweep from which on the error stays below 1%, over all
     samples and over those ending in the reference's mixture component,
  2. the error at 10 and 20 NFE as a ratio to DDIM's on the same grid and NFE,
  3. order estimates log2(err(n) / err(2n)) at n = 20 and 40 steps (--order-steps).

Problems: "vp" (VPSDE, t from 1 to 1e-3: sigma/alpha from 152 to 0.01), "karras"
(VESDE with sigma from 80 to 0.002, the range of Karras et al. 2022 that k-diffusion
uses) and, with --problems, "ve" (VESDE, sigma from 50 to 0.0013). Each runs on the
2-D ring mixture (8 components, radius 4, std 0.5, weights 1..8) and on a 64-D
mixture of 5 isotropic components (means N(0, I), stds U(0.3, 1), weights 1..5,
numpy seed 0). Each (problem, sampler, grid) is one task in a pool of
single-threaded CPU processes.
"""
import argparse
import concurrent.futures
import functools
import math
import multiprocessing
import os
import time

NFE_SWEEP = (5, 6, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 48, 64, 80)
HEUN_STEPS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 17, 21, 25, 33, 41)
ORDER_STEPS = (20, 40, 80)
SAMPLERS = ("ddim", "dpm2m", "dpm3m", "dpm3m_ref", "heun")
DISCRETIZATIONS = ("logsnr", "edm", "quadratic", "uniform")
PROBLEMS = ("vp/rings2d", "vp/mix64d", "karras/rings2d", "karras/mix64d")
ALL_PROBLEMS = PROBLEMS + ("ve/rings2d", "ve/mix64d")
NFE_PER_STEP = {"heun": lambda n: 2 * n - 1}
KARRAS_SIGMA = (80.0, 0.002)


def _setup_worker():
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@functools.cache
def _problem(name, num):
    import jax
    import numpy as np

    from genjax.data import toy2d
    from genjax.data.toy2d import exact_score_fn
    from genjax.diffusion import samplers
    from genjax.diffusion import sde as sde_lib

    sde_name, mix_name = name.split("/")
    if sde_name == "vp":
        sde, eps = sde_lib.VPSDE(), 1e-3
    elif sde_name == "ve":
        sde, eps = sde_lib.VESDE(), 1e-3
    else:
        # sigma(t) = s_min sqrt((s_max / s_min)^{2t} - 1) equals s_min at 2t log(s_max / s_min) = log 2.
        s_max, s_min = KARRAS_SIGMA
        sde = sde_lib.VESDE(sigma_min=s_min, sigma_max=s_max)
        eps = math.log(2.0) / (2.0 * math.log(s_max / s_min))
    if mix_name == "rings2d":
        mixture = toy2d.gaussian_rings_mixture(8, 4.0, 0.5)
    else:
        rng = np.random.RandomState(0)
        mixture = toy2d.GaussianMixture.isotropic(rng.randn(5, 64), rng.uniform(0.3, 1.0, 5), np.arange(1, 6))
    score_fn = exact_score_fn(sde, mixture)
    x_init = sde.prior_sample(jax.random.PRNGKey(0), (num, mixture.dim))
    ref, nfe = jax.jit(lambda x: samplers.ode_sample(
        None, sde, score_fn, x.shape, rtol=1e-6, atol=1e-6, eps=eps, x_init=x))(x_init)
    ref_labels = jax.numpy.argmax(mixture.responsibilities(ref), axis=1)
    return sde, eps, score_fn, x_init, ref, int(nfe), mixture, ref_labels


def _run(task):
    """Relative RMS errors of one (problem, sampler, grid) over its step sweep: over all
    samples, and over those that end in the same mixture component as the reference
    (a trajectory near a decision boundary can end in a neighbouring component, a
    discrete error that dominates the RMS in 64-D), with the count of the others."""
    _setup_worker()
    import jax
    import jax.numpy as jnp

    from genjax.diffusion import solvers

    problem, sampler, discretization, num, quick, order_steps = task
    sde, eps, score_fn, x_init, ref, ref_nfe, mixture, ref_labels = _problem(problem, num)
    fns = {
        "ddim": solvers.ddim_sample,
        "dpm2m": functools.partial(solvers.dpm_solver_sample, order=2),
        "dpm3m": functools.partial(solvers.dpm_solver_sample, order=3),
        "dpm3m_ref": functools.partial(solvers.dpm_solver_sample, order=3, third_order="reference"),
        "heun": solvers.edm_heun_sample,
    }
    fn = fns[sampler]
    steps = set(HEUN_STEPS if sampler == "heun" else NFE_SWEEP) | set(order_steps)
    if quick:
        steps = {10, 20, 40}
    elif order_steps != ORDER_STEPS:
        steps = set(order_steps)
    errors, kept_errors, flips = {}, {}, {}
    for n in sorted(steps):
        x = jax.jit(lambda x: fn(jax.random.PRNGKey(1), sde, score_fn, x.shape, n, x_init=x, eps=eps,
                                 discretization=discretization))(x_init)
        sq_err, sq_ref = jnp.sum((x - ref) ** 2, axis=1), jnp.sum(ref**2, axis=1)
        same = jnp.argmax(mixture.responsibilities(x), axis=1) == ref_labels
        errors[n] = float(jnp.sqrt(jnp.sum(sq_err) / jnp.sum(sq_ref)))
        kept_errors[n] = float(jnp.sqrt(jnp.sum(jnp.where(same, sq_err, 0.0)) / jnp.sum(jnp.where(same, sq_ref, 0.0))))
        flips[n] = int(jnp.sum(~same))
    return problem, sampler, discretization, errors, kept_errors, flips, ref_nfe


def _nfe(sampler, n):
    return NFE_PER_STEP.get(sampler, lambda k: k)(n)


def nfe_to_reach(errors_by_nfe, threshold=0.01):
    """Smallest swept NFE from which on every error is below the threshold (None if never)."""
    best = None
    for nfe in sorted(errors_by_nfe, reverse=True):
        if errors_by_nfe[nfe] >= threshold:
            break
        best = nfe
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="three step counts, VP 2-D only (a smoke run)")
    parser.add_argument("--problems", nargs="+", default=PROBLEMS, choices=ALL_PROBLEMS)
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS, choices=SAMPLERS)
    parser.add_argument("--discretizations", nargs="+", default=DISCRETIZATIONS, choices=DISCRETIZATIONS)
    parser.add_argument("--order-steps", nargs="+", type=int, default=ORDER_STEPS,
                        help="step counts for the order table; other than the default, only these are run")
    args = parser.parse_args()

    problems = ("vp/rings2d",) if args.quick else tuple(args.problems)
    samplers, grids, order_steps = tuple(args.samplers), tuple(args.discretizations), tuple(args.order_steps)
    if "ddim" not in samplers:
        samplers = ("ddim",) + samplers  # the baseline of the ratio tables
    tasks = [(p, s, d, args.num, args.quick, order_steps) for p in problems for s in samplers for d in grids]
    # The 64-D problems cost most; start them first.
    tasks.sort(key=lambda task: "64d" not in task[0])
    t0 = time.time()
    results, ref_nfes = {}, {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_setup_worker) as pool:
        for problem, sampler, disc, errors, kept, flips, ref_nfe in pool.map(_run, tasks):
            results[problem, sampler, disc] = {_nfe(sampler, n): e for n, e in errors.items()}
            results[problem, sampler, disc, "kept"] = {_nfe(sampler, n): e for n, e in kept.items()}
            results[problem, sampler, disc, "flips"] = {_nfe(sampler, n): f for n, f in flips.items()}
            results[problem, sampler, disc, "steps"] = errors
            ref_nfes[problem] = ref_nfe

    print(f"# Samplers vs the exact probability-flow ODE ({args.num} samples, {time.time() - t0:.0f} s)\n")
    print("Reference: adaptive Tsit5 at rtol = atol = 1e-6; its NFE per problem: "
          + ", ".join(f"{p} {n}" for p, n in ref_nfes.items()) + "\n")
    print("## NFE needed for < 1% relative RMS error (and at every larger swept NFE)\n")
    header = "| problem | grid | " + " | ".join(samplers) + " |"
    print(header)
    print("|" + "---|" * (len(samplers) + 2))
    for p in problems:
        for d in grids:
            cells = []
            for s in samplers:
                reached = nfe_to_reach(results[p, s, d])
                cells.append(">" + str(max(results[p, s, d])) if reached is None else str(reached))
            print(f"| {p} | {d} | " + " | ".join(cells) + " |")

    print("\n## The same over the samples that end in the reference's mixture component;"
          " in brackets, how many of the others there are at 20 NFE and at the largest swept NFE\n")
    print(header)
    print("|" + "---|" * (len(samplers) + 2))
    for p in problems:
        for d in grids:
            cells = []
            for s in samplers:
                kept, flips = results[p, s, d, "kept"], results[p, s, d, "flips"]
                reached = nfe_to_reach(kept)
                cell = ">" + str(max(kept)) if reached is None else str(reached)
                at20 = flips.get(19 if s == "heun" else 20, "-")
                cells.append(f"{cell} [{at20}, {flips[max(flips)]}]")
            print(f"| {p} | {d} | " + " | ".join(cells) + " |")

    for nfe in (10, 20):
        print(f"\n## Relative RMS error at {nfe} NFE (Heun: {nfe - 1} NFE), and its ratio to DDIM's\n")
        print(header)
        print("|" + "---|" * (len(samplers) + 2))
        for p in problems:
            for d in grids:
                base = results[p, "ddim", d].get(nfe)
                cells = []
                for s in samplers:
                    e = results[p, s, d].get(nfe - 1 if s == "heun" else nfe)
                    cells.append("-" if e is None or base is None else f"{e:.2e} ({e / base:.2f})")
                print(f"| {p} | {d} | " + " | ".join(cells) + " |")

    pairs_text = ", ".join(f"{a}->{2 * a}" for a in order_steps if 2 * a in order_steps)
    print(f"\n## Order estimates log2(err(n) / err(2n)) in steps n: {pairs_text}\n")
    print(header)
    print("|" + "---|" * (len(samplers) + 2))
    for p in problems:
        for d in grids:
            cells = []
            for s in samplers:
                e = results[p, s, d, "steps"]
                pairs = [(a, 2 * a) for a in order_steps if a in e and 2 * a in e]
                cells.append(" / ".join(f"{math.log2(e[a] / e[b]):.2f}" for a, b in pairs) or "-")
            print(f"| {p} | {d} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
