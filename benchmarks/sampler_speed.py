r"""Samples per second at equal quality: multistep DPM-Solver++ (order 3) at a few
dozen NFE against Euler-Maruyama on the reverse SDE at 1000 steps.

    python -m benchmarks.sampler_speed [--workdir RUN] [--num 256] [--dpm-nfe 20] \
        [--em-steps 1000] [--repeats 5] [--quick]
    python -m benchmarks.sampler_speed --problem mix64d [--num 2000]

digits (with --workdir): the EMA model of a trained digits score run of
experiments.main, built from the run's saved config (`experiments.run_config.load_run`;
--config only supplies keys a newer config added); quality is the classifier
Fréchet distance to the test split. mix64d (without --workdir, or with --problem
mix64d): the exact score of the 64-D Gaussian mixture of the sampler study;
quality is the sliced Wasserstein distance to exact samples. Both samplers start
from the same initial noise (`experiments.sampler_study`). Each jitted sampler is
warmed up, then timed as the median of --repeats runs, blocking on the result.
Prints both rates, the speed-up and each sampler's quality next to the floor
(data against data) so that "equal quality" can be read off. --quick: 100
samples, Euler-Maruyama at 100 steps, 2 repeats.
"""
import argparse
import time

import jax
from absl import logging

from benchmarks.common import device_description, no_run_note, time_fn, trained_config
from experiments import sampler_study as ss
from experiments.configuration import ConfigError, exit_with, load_config_file


def build_problem(args):
    if args.problem == "mix64d" or (args.problem is None and not args.workdir):
        if args.problem is None:
            print(no_run_note("--workdir", "the exact score of the 64-D Gaussian mixture (mix64d) instead "
                              "of a trained digits model", "sampling time grows with the network's cost"))
        return ss.mix64d_problem(args.num or ss.DEFAULT_NUM["mix64d"])
    if not args.workdir:
        raise SystemExit("--problem digits needs --workdir of a trained run")
    template = None
    if args.config:
        template = load_config_file(args.config)
    config = trained_config(args.workdir, ("score_sde", "ddpm"), template=template)
    if config.data.name != "digits":
        exit_with(ConfigError(f"--workdir={args.workdir}: a run on {config.data.name!r}; --problem digits "
                              f"reads a run on 'digits' (e.g. configs/digits_score_sde.py)"))
    return ss.digits_problem(config, args.workdir, args.num or ss.DEFAULT_NUM["digits"])


def measure(problem, name, target_nfe, repeats):
    """(samples per second, NFE, quality, compile seconds) of one sampler."""
    fn, _, nfe = ss.make_sampler(problem, name, target_nfe)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(problem.params, problem.x_init).compile()
    compile_s = time.perf_counter() - t0
    seconds = time_fn(compiled, problem.params, problem.x_init, repeats=repeats, warmup=1)
    quality = problem.quality(compiled(problem.params, problem.x_init))
    return problem.x_init.shape[0] / seconds, nfe, quality, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=("digits", "mix64d"), default=None,
                        help="digits with --workdir, else mix64d")
    parser.add_argument("--workdir", default=None, help="a trained digits run")
    parser.add_argument("--config", default=None,
                        help="the run's config file, for keys its saved config lacks (the run's own values win)")
    parser.add_argument("--num", type=int, default=None, help="samples per call (256 digits, 2000 mix64d)")
    parser.add_argument("--dpm-nfe", type=int, default=20)
    parser.add_argument("--em-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.num, args.em_steps, args.repeats = 100, 100, 2
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO

    print(f"device: {device_description()}")
    problem = build_problem(args)
    num = problem.x_init.shape[0]
    print(f"problem: {problem.name}, {num} samples per call, median of {args.repeats} runs after warm-up")
    dpm_rate, dpm_nfe, dpm_q, dpm_c = measure(problem, "dpm_solver_3", args.dpm_nfe, args.repeats)
    em_rate, em_nfe, em_q, em_c = measure(problem, "euler_maruyama", args.em_steps, args.repeats)
    m = problem.metric
    print(f"| sampler | NFE | samples/s | {m} | compile s |")
    print("|---|---|---|---|---|")
    print(f"| DPM-Solver++ 3M (log-SNR grid) | {dpm_nfe} | {dpm_rate:.4g} | {dpm_q:.4g} | {dpm_c:.1f} |")
    print(f"| Euler-Maruyama | {em_nfe} | {em_rate:.4g} | {em_q:.4g} | {em_c:.1f} |")
    print(f"{m} floor (data vs data, same size; mean ± std over {ss.FLOOR_SETS} sets): "
          f"{problem.floor:.4g} ± {problem.floor_std:.2g}")
    print(f"speed-up DPM-Solver++ / Euler-Maruyama: {dpm_rate / em_rate:.1f}x "
          f"({em_nfe / dpm_nfe:.0f}x fewer NFE); {m} {dpm_q:.4g} vs {em_q:.4g}")


if __name__ == "__main__":
    main()
