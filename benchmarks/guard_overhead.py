"""What the run's safety checks cost: the divergence guard and checkpoint checksums.

    python -m benchmarks.guard_overhead [--config=configs/toy_vpsde.py] [--repeats 15] [--big-mib 64] [--quick]

1. One compiled train call (train.steps_per_call steps) of the config, with the
   train step's `params_finite` flag (`genjax.train.all_finite`) against the same
   step with the flag a constant (XLA then computes nothing for it), in the same
   process, calls interleaved, median of the repeats; plus the host side of the
   guard (`experiments.run_loop._guard`) on that call's metrics. Run at the
   config's batch size and at a batch of 8, where the step is dominated by
   parameter-sized work (the optimizer update) and a parameter check weighs most.
2. Checkpoint save and restore of the config's TrainState and of a 64 MiB state:
   `Checkpointer.save` (orbax, then SHA-256 of every file, written atomically)
   against orbax alone; opening a Checkpointer (which verifies the newest step)
   and restoring, against orbax's manager restoring the same step unverified;
   and the checksum work alone (writing checksums.json, verifying a step), which
   is what the save and open add to orbax's own time.

Prints medians in milliseconds and each ratio (with / without). The state is the
config's initial one (no trained run is read: none of these costs depends on the
weights' values). --quick: 5 steps per call at batch 64, a 4 MiB state, 3 repeats.
"""
import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from benchmarks.common import device_description
from experiments import checkpoint, run_loop
from experiments.checkpoint import Checkpointer
from experiments.configuration import load_config_file
from experiments.experiment import Experiment
from genjax import train as train_lib


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    """{name: median seconds}, each fn warmed up once, then called in turn `repeats` times."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def train_call(config, repeats: int) -> None:
    exp = Experiment(config)
    mesh, state = run_loop.place_state(exp.init_state())
    checked = jax.jit(exp.train_fn(mesh))
    real_all_finite = train_lib.all_finite
    train_lib.all_finite = lambda tree: jnp.array(True)  # the step as it was before the flag
    try:
        unchecked = jax.jit(exp.train_fn(mesh))
        jax.block_until_ready(unchecked(state))  # traced while the constant stands in
    finally:
        train_lib.all_finite = real_all_finite
    medians = _interleaved_medians({"with": lambda: checked(state), "without": lambda: unchecked(state)}, repeats)
    _, metrics = checked(state)
    metrics = jax.device_get(metrics)
    t0 = time.perf_counter()
    for _ in range(100):
        run_loop._guard(metrics, 0, False, None)
    guard_host = (time.perf_counter() - t0) / 100
    steps = config.train.steps_per_call
    print(f"train call, batch {config.data.batch_size}, {steps} steps: with params_finite "
          f"{1e3 * medians['with']:.2f} ms, without {1e3 * medians['without']:.2f} ms, ratio "
          f"{medians['with'] / medians['without']:.3f}; host guard {1e6 * guard_host:.0f} us per call "
          f"({guard_host / medians['without']:.2%} of the call)")


def save_restore(name: str, state, repeats: int) -> None:
    state = jax.device_get(state)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state))
    with tempfile.TemporaryDirectory() as root:
        checked_dir, plain_dir = os.path.join(root, "checked"), os.path.join(root, "plain")
        ckpt = Checkpointer(checked_dir, keep=2)
        plain = ocp.CheckpointManager(os.path.join(plain_dir, "checkpoints"),
                                      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        counter = iter(range(1, 10**6))

        def checked_save():
            ckpt.save(next(counter), state)

        def plain_save():
            plain.save(next(counter), args=ocp.args.StandardSave(state), force=True)
            plain.wait_until_finished()

        saves = _interleaved_medians({"with": checked_save, "without": plain_save}, repeats)
        step = ckpt.latest_step()
        step_dir = os.path.join(ckpt.directory, str(step))
        ckpt.close()
        hashing = _interleaved_medians({"write": lambda: checkpoint.write_checksums(step_dir, step),
                                        "verify": lambda: checkpoint.checksum_problem(step_dir, step)}, repeats)

        def checked_restore():
            opened = Checkpointer(checked_dir, keep=2)
            try:
                return opened.restore(state)
            finally:
                opened.close()

        def plain_restore():
            return plain.restore(plain.latest_step(), args=ocp.args.StandardRestore(abstract))

        restores = _interleaved_medians({"with": checked_restore, "without": plain_restore}, repeats)
        plain.close()
    for what, m in (("save", saves), ("open + restore", restores)):
        print(f"{name} ({nbytes / 2**20:.2f} MiB) {what}: with checksums {1e3 * m['with']:.1f} ms, orbax alone "
              f"{1e3 * m['without']:.1f} ms, ratio {m['with'] / m['without']:.2f}")
    print(f"{name}: writing checksums.json {1e3 * hashing['write']:.1f} ms, verifying the step "
          f"{1e3 * hashing['verify']:.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/toy_vpsde.py")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--big-mib", type=int, default=64, help="size of the large state in MiB")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    print(device_description())
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    config = load_config_file(args.config).copy_and_resolve_references()
    if args.quick:
        config.train.steps_per_call, config.data.batch_size, args.big_mib, args.repeats = 5, 64, 4, 3
    print(f"{args.config} at its initial parameters (no trained run is read), {config.train.steps_per_call} steps "
          f"per call; states of the config and of {args.big_mib} MiB; median of {args.repeats} after warm-up")
    train_call(config, args.repeats)
    small = config.copy_and_resolve_references()
    small.data.batch_size = 8
    train_call(small, args.repeats)
    save_restore("the config's TrainState", Experiment(config).init_state(), args.repeats)
    big = {"w": np.random.default_rng(0).standard_normal((args.big_mib * 2**18 // 4096, 4096), dtype=np.float32)}
    save_restore(f"a {args.big_mib} MiB state", big, max(args.repeats // 3, 3))


if __name__ == "__main__":
    main()
