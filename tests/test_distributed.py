"""Multi-process runs on one machine: `python -m experiments.main --distributed`
with explicit --coordinator/--num_processes/--process_id, started as local
processes that meet on 127.0.0.1, against single-process runs of the same total
device count; and the flag checks.

The children run on CPU with their own device count (XLA_FLAGS), not the 8 forced
devices of this test process, which only reads their checkpoints back.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import toy_vpsde
from experiments import distributed
from experiments.checkpoint import Checkpointer
from experiments.experiment import Experiment

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_PATH = REPO / "configs" / "toy_vpsde.py"
# A tiny score model with a constant learning rate, so that the schedule does not
# depend on train.num_steps and a run extended on resume follows the same
# trajectory as one that was given the longer budget from the start.
TINY = {"model.hidden": "(16,16)", "data.batch_size": "64", "train.steps_per_call": "5",
        "train.checkpoint_every": "5", "optim.schedule": "constant", "optim.warmup_steps": "0"}
CHILD_TIMEOUT_S = 240  # per group of processes; a healthy group takes ~10 s on 2 cores


def _config(num_steps: int):
    c = toy_vpsde.get_config()
    c.model.hidden = (16, 16)
    c.data.batch_size = 64
    c.train.steps_per_call = c.train.checkpoint_every = 5
    c.optim.schedule, c.optim.warmup_steps = "constant", 0
    c.train.num_steps = num_steps
    return c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(devices: int) -> dict:
    """This environment on CPU with `devices` host devices and the tests' compilation
    cache, without proxy variables (gRPC would send the coordinator's 127.0.0.1
    traffic to a proxy) and without a coordinator address from outside."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    env.pop(distributed.COORDINATOR_ENV, None)
    return env


def _main_command(workdir, num_steps: int, *extra) -> list[str]:
    overrides = {**TINY, "train.num_steps": str(num_steps)}
    return [sys.executable, "-m", "experiments.main", f"--config={CONFIG_PATH}", f"--workdir={workdir}",
            "--mode=train", *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


def _distributed_commands(workdir, num_steps: int, num_processes: int) -> list[list[str]]:
    port = _free_port()
    return [_main_command(workdir, num_steps, "--distributed", f"--coordinator=127.0.0.1:{port}",
                          f"--num_processes={num_processes}", f"--process_id={i}")
            for i in range(num_processes)]


def _run_concurrently(commands: list[tuple[list[str], int]]) -> None:
    """Runs (command, host devices) pairs as concurrent processes. If one fails, or
    they are not all done within CHILD_TIMEOUT_S (a process whose peer died waits
    for it), kills every one and fails with the end of each one's stderr."""
    procs = [subprocess.Popen(c, cwd=REPO, env=_child_env(devices), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c, devices in commands]
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    outputs, timed_out = [], False
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            timed_out = True
            for p in procs:
                p.kill()
            outputs.append(proc.communicate())
    if timed_out or any(p.returncode for p in procs):
        report = "\n".join(f"--- {' '.join(c[3:])} (exit {p.returncode}):\n{err[-3000:]}"
                           for (c, _), p, (_, err) in zip(commands, procs, outputs))
        pytest.fail(f"{f'timed out after {CHILD_TIMEOUT_S} s; ' if timed_out else ''}a child run "
                    f"failed:\n{report}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs of the same tiny run: "two_processes" (10 steps on two processes of
    one device each) and "one_process" (20 steps on one process of two devices,
    checkpointed every 5), started together."""
    root = tmp_path_factory.mktemp("distributed")
    two, one = root / "two_processes", root / "one_process"
    _run_concurrently([(c, 1) for c in _distributed_commands(two, 10, 2)] + [(_main_command(one, 20), 2)])
    return {"two_processes": two, "one_process": one}


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _leaves(workdir, num_steps: int, part=lambda state: state) -> list[np.ndarray]:
    """The leaves of the newest checkpoint's TrainState (or of `part` of it)."""
    state = Experiment(_config(num_steps)).restore(str(workdir))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(part(state))]


def _max_abs_diff(a_leaves, b_leaves) -> float:
    return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(a_leaves, b_leaves)
               if a.dtype.kind == "f")


def test_two_processes_train_as_one(runs):
    """Two processes of one device each against one process of two devices: the
    same 2-device `data` mesh and global batch, so bit-identical losses and state.
    Each step's loss and gradient are means over the batch whose two per-device
    halves are summed across the mesh, and a sum of two float32 numbers is the same
    in either order: the cross-process reduction (gloo) cannot differ from the
    in-process one. Process 0 alone wrote the run's files: each step logged once."""
    two, one = runs["two_processes"], runs["one_process"]
    two_records, one_records = _records(two), _records(one)
    assert [r["step"] for r in two_records] == [5, 10]
    for a, b in zip(two_records, one_records[:2]):
        assert (a["step"], a["loss"], a["grad_norm"]) == (b["step"], b["loss"], b["grad_norm"])
    assert os.path.exists(two / "config.json") and os.path.exists(two / "loss.png")
    assert len(os.listdir(two / "tensorboard")) == 1  # one events file: one writer

    ckpt = Checkpointer(str(one))
    try:
        reference = ckpt.restore(Experiment(_config(20)).init_state(), step=10)
    finally:
        ckpt.close()
    for a, b in zip(_leaves(two, 10), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_checkpoint_of_two_processes_resumes_in_one(runs, tmp_path):
    """The two processes' checkpoint of step 10, resumed by one process with the
    budget raised to 20 steps, ends bit-identical to the run that never stopped
    (the constant learning rate makes the budget no part of the trajectory), and
    its log holds each step once."""
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["two_processes"], resumed)
    _run_concurrently([(_main_command(resumed, 20), 2)])
    one_records = _records(runs["one_process"])
    assert [r["step"] for r in _records(resumed)] == [5, 10, 15, 20]
    assert [r["loss"] for r in _records(resumed)] == [r["loss"] for r in one_records]
    for a, b in zip(_leaves(resumed, 20), _leaves(runs["one_process"], 20)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_parameters_sharded_over_two_processes_train_as_one(tmp_path):
    """train.fsdp=2 on two processes of one device each shards every parameter
    across the processes; each checkpoint gathers the shards (in every process)
    into one host copy. Against one process of two devices with the same
    ("data", "fsdp") mesh: bit-identical losses and state (each reduction adds
    two numbers, as in the unsharded case)."""
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    fsdp = "--config.train.fsdp=2"
    _run_concurrently([(c + [fsdp], 1) for c in _distributed_commands(two, 10, 2)]
                      + [(_main_command(one, 10, fsdp), 2)])
    assert _records(two) and [(r["step"], r["loss"]) for r in _records(two)] == [
        (r["step"], r["loss"]) for r in _records(one)]
    for a, b in zip(_leaves(two, 10), _leaves(one, 10)):
        np.testing.assert_array_equal(a, b)


# experiments.main with process 0's checksum write delayed: a process that opened
# the workdir before the checksums of the final checkpoint exist would take that
# step for an interrupted save, and sampling would fail in that process only.
DELAYED_CHECKSUMS = """
import time
from experiments import checkpoint, main
write = checkpoint.write_checksums
checkpoint.write_checksums = lambda *args: (time.sleep(2), write(*args))[1]
main.run()
"""


@pytest.mark.slow
def test_two_processes_sample_and_evaluate_after_their_last_save(tmp_path):
    """--mode=all on two processes: both restore the final checkpoint for sampling
    and evaluation (each process returns from a save only once its checksums are
    written), and process 0 alone writes the samples, eval.json and the log."""
    workdir = tmp_path / "run"
    extra = ["--mode=all", "--config.sample.num=64", "--config.sample.num_steps=10", "--config.eval.num=32",
             "--config.eval.grid_size=4"]
    commands = [[sys.executable, "-c", DELAYED_CHECKSUMS, *c[3:], *extra]
                for c in _distributed_commands(workdir, 10, 2)]
    _run_concurrently([(c, 1) for c in commands])
    records = _records(workdir)
    assert [r["step"] for r in records] == [5, 10, 10]
    assert [("eval/nll_nats" in r) for r in records] == [False, False, True]
    with open(workdir / "eval.json") as f:
        assert json.load(f)["step"] == 10
    assert np.load(workdir / "samples.npz")["samples"].shape == (64, 2)
    assert not os.path.exists(workdir / "checkpoints_damaged")


@pytest.mark.slow
def test_four_devices_per_process_match_eight_in_one_to_rounding(tmp_path):
    """Two processes of four devices each against one process of eight: the same
    mesh and global batch, but each step's loss and gradient sum eight per-device
    partial sums, which the cross-process reduction (gloo) adds in another order
    than XLA's in-process one: float32 rounding, an ulp or so per step (measured
    on a 20-step run: losses of ~50 within 3.8e-6, one ulp; parameters within
    1.8e-7). Adam divides each gradient by its running scale, so a rounding change
    moves a parameter by a small fraction of its step of at most ~lr = 2e-3; the
    bounds below (losses to 1e-5 relative, the whole state to 1e-5 absolute, lr/200)
    leave room for another CPU's rounding but fail on any real divergence, such as
    a step that differs in sign or in its batch."""
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    _run_concurrently([(c, 4) for c in _distributed_commands(two, 20, 2)] + [(_main_command(one, 20), 8)])
    two_records, one_records = _records(two), _records(one)
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [5, 10, 15, 20]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two_records, one_records))
    params = lambda state: state.params  # noqa: E731
    params_diff = _max_abs_diff(_leaves(two, 20, params), _leaves(one, 20, params))
    state_diff = _max_abs_diff(_leaves(two, 20), _leaves(one, 20))
    print(f"2 processes x 4 devices vs 1 x 8, 20 steps: max |loss diff| {loss_diff:.3g}, max |param diff| "
          f"{params_diff:.3g}, max |diff| over the whole state (EMA, Adam moments) {state_diff:.3g}")
    for a, b in zip(two_records, one_records):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert state_diff < 1e-5


@pytest.mark.parametrize("args, message", [
    (("127.0.0.1:1234", 2, 2), "--process_id=2; expected 0..1 (one of --num_processes=2 processes)"),
    (("127.0.0.1:1234", 2, -1), "--process_id=-1; expected 0..1"),
    (("127.0.0.1:1234", 0, 0), "--num_processes=0; expected the number of processes, at least 1"),
    (("127.0.0.1", 2, 0), "--coordinator='127.0.0.1'; expected HOST:PORT with a port in 1..65535"),
    ((":1234", 2, 0), "--coordinator=':1234'; expected HOST:PORT"),
    (("127.0.0.1:70000", 2, 0), "--coordinator='127.0.0.1:70000'; expected HOST:PORT with a port in 1..65535"),
    (("127.0.0.1:1234", None, 0), "--num_processes missing (given: --coordinator=127.0.0.1:1234, --process_id=0)"),
    ((None, 2, 1), "--coordinator missing (given: --num_processes=2, --process_id=1)"),
])
def test_inconsistent_flags_name_the_value_and_the_expectation(args, message, monkeypatch):
    monkeypatch.delenv(distributed.COORDINATOR_ENV, raising=False)
    with pytest.raises(ValueError) as err:
        distributed.check_arguments(*args)
    assert message in str(err.value)


def test_the_coordinator_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(distributed.COORDINATOR_ENV, "127.0.0.1:1234")
    distributed.check_arguments(None, 2, 1)
    monkeypatch.setenv(distributed.COORDINATOR_ENV, "nohost")
    with pytest.raises(ValueError, match="--coordinator='nohost'; expected HOST:PORT"):
        distributed.check_arguments(None, 2, 1)


def test_repeated_or_negative_device_ids_are_an_error():
    for ids in ([0, 0], [-1]):
        with pytest.raises(ValueError, match="--local_device_ids=.*; expected distinct device indices >= 0"):
            distributed.check_arguments("127.0.0.1:1234", 2, 0, ids)


def test_no_flags_means_cluster_detection():
    distributed.check_arguments(None, None, None)  # nothing to check: jax reads the cluster


def test_command_line_exits_2_naming_the_bad_flag(tmp_path):
    """Checked before JAX starts (or, without a cluster to detect, as it starts):
    one line on stderr, exit code 2, nothing written."""
    for extra, message in [
        (["--distributed", "--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=5"],
         "error: --process_id=5; expected 0..1"),
        (["--num_processes=2", "--process_id=0"], "without --distributed"),
        (["--distributed"], "error: --distributed found no cluster environment"),
    ]:
        env = {k: v for k, v in _child_env(1).items()  # no cluster for JAX to detect
               if not k.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "TPU_"))}
        proc = subprocess.run(_main_command(tmp_path / "w", 10, *extra), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not os.path.exists(tmp_path / "w" / "config.json")
