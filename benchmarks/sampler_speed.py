"""Samples per second at equal quality: multistep DPM-Solver++ (order 3) at a few
dozen NFE against Euler-Maruyama on the reverse SDE at 1000 steps.

    python -m benchmarks.sampler_speed --workdir RUN [--config configs/base_digits.py] \
        [--num 256] [--dpm-nfe 20] [--em-steps 1000] [--repeats 5]
    python -m benchmarks.sampler_speed --problem mix64d [--num 2000]

digits (default): the EMA model of a trained run of experiments.main (its own
config.json unless --config is given); quality is the classifier Fréchet distance
to the test split. mix64d: the exact score of the 64-D Gaussian mixture of the
sampler study; quality is the sliced Wasserstein distance to exact samples. Both
samplers start from the same initial noise (`experiments.sampler_study`). Each
jitted sampler is warmed up, then timed as the median of --repeats runs, blocking
on the result. Prints both rates, the speed-up and each sampler's quality next to
the floor (data against data) so that "equal quality" can be read off.
"""
import argparse
import json
import os
import time

import jax
from absl import logging

from benchmarks.common import device_description, time_fn
from experiments import sampler_study as ss


def load_config(config_path, workdir):
    """The config file given, else the run's own config.json (with its overrides)."""
    import ml_collections

    from experiments import configuration

    if config_path:
        return configuration.load_config_file(config_path)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise SystemExit(f"no config.json in {workdir!r}; pass --config")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def build_problem(args):
    if args.problem == "mix64d":
        return ss.mix64d_problem(args.num or ss.DEFAULT_NUM["mix64d"])
    if not args.workdir:
        raise SystemExit("--problem digits needs --workdir of a trained run")
    config = load_config(args.config, args.workdir)
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
    parser.add_argument("--problem", choices=("digits", "mix64d"), default="digits")
    parser.add_argument("--workdir", default=None, help="a trained digits run")
    parser.add_argument("--config", default=None, help="config file (default: <workdir>/config.json)")
    parser.add_argument("--num", type=int, default=None, help="samples per call (256 digits, 2000 mix64d)")
    parser.add_argument("--dpm-nfe", type=int, default=20)
    parser.add_argument("--em-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
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
