r"""Training time of every default config, estimated from its measured step rate.

    python -m benchmarks.config_run_times [--configs toy_vpsde,digits_cfg] [--calls 2]

For each config that `experiments.main` trains (configs/*.py with get_config, not
the scaling sweep or the rectified-flow pipeline, which have their own scripts and
measured times in docs/RESULTS.md): builds the run as `experiments.main` does,
times the first compiled call (compilation included) and then the median of
--calls more, and prints steps per second and the estimated training time,
first call + (train.num_steps - train.steps_per_call) / rate. Sampling and
evaluation are not included. The figures are for this machine's load: run it on
an otherwise idle machine.
"""
import argparse
import os
import statistics
import time

import jax

from benchmarks.common import device_description
from experiments import configuration, run_loop
from experiments.experiment import Experiment
from experiments.main import CONFIG_DIR

NOT_TRAINED_BY_MAIN = ("scaling_stdlib.py", "toy_reflow.py")


def default_configs() -> list:
    names = []
    for file in sorted(os.listdir(CONFIG_DIR)):
        if (file.endswith(".py") and not file.startswith(("base_", "common", "_"))
                and file not in NOT_TRAINED_BY_MAIN
                and "def get_config" in open(os.path.join(CONFIG_DIR, file)).read()):
            names.append(file[:-3])
    return names


def measure(name: str, calls: int) -> dict:
    config = configuration.load_config_file(os.path.join(CONFIG_DIR, name + ".py"))
    exp = Experiment(config)
    tc = config.train
    mesh, state = run_loop.place_state(exp.init_state(), tc.get("fsdp", 1))
    step = exp.compiled_train_fn(mesh)
    t0 = time.perf_counter()
    state, metrics = step(state)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    seconds = []
    for _ in range(calls):
        t0 = time.perf_counter()
        state, metrics = step(state)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - t0)
    rate = tc.steps_per_call / statistics.median(seconds)
    return {"config": name, "num_steps": tc.num_steps, "steps_per_call": tc.steps_per_call,
            "first_call_s": first, "steps_per_s": rate,
            "estimated_minutes": (first + (tc.num_steps - tc.steps_per_call) / rate) / 60}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=None, help="comma-separated names (default: every default config)")
    parser.add_argument("--calls", type=int, default=2, help="timed calls after the first (median)")
    args = parser.parse_args()
    names = args.configs.split(",") if args.configs else default_configs()
    print(f"device: {device_description()}; load average {os.getloadavg()[0]:.1f} at start")
    print("| config | steps | steps/s | first call (s) | estimated training (min) |")
    print("|---|---|---|---|---|")
    for name in names:
        r = measure(name, args.calls)
        print(f"| {r['config']} | {r['num_steps']} | {r['steps_per_s']:.1f} | {r['first_call_s']:.1f} | "
              f"{r['estimated_minutes']:.1f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
