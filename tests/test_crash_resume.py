"""SIGKILL at random moments, then resume: a real `python -m experiments.main` run,
killed again and again (some kills while orbax writes a checkpoint, some right
after start-up, some at a random time), ends with parameters bit-identical to a
run that never stopped and a metrics log holding every step once."""
import os
import random
import runpy
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import main
from experiments.logging import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_CALL = 5

# A checkpoint after every compiled call of 5 steps: most of a run's time after
# start-up is spent saving, so kills land inside saves.
CONFIG = """from configs import toy_vpsde


def get_config():
    c = toy_vpsde.get_config()
    c.model.hidden = (16, 16)
    c.data.batch_size = 64
    c.train.num_steps = {num_steps}
    c.train.steps_per_call = {steps_per_call}
    c.train.checkpoint_every = {steps_per_call}
    return c
"""


def _newest_step(checkpoints: str) -> int:
    steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()] if os.path.isdir(checkpoints) else []
    return max(steps, default=0)


def _temporary(checkpoints: str) -> set:
    """orbax's temporary directories: a step being written, or left by a kill and
    not yet cleaned up by the next launch."""
    return {n for n in os.listdir(checkpoints) if "orbax-checkpoint-tmp" in n} if os.path.isdir(checkpoints) else set()


def _wait(proc, condition, timeout: float = 120.0) -> bool:
    """Polls `condition` every 2 ms until it holds (True) or the process
    exits (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            return True
        if time.monotonic() > deadline:
            raise TimeoutError("the training process made no progress")
        time.sleep(0.002)
    return False


def _kill_and_resume(tmp_path, *, num_kills: int, num_steps: int, seed: int):
    """Trains in a subprocess, SIGKILLs it `num_kills` times at moments taken in
    turn from: inside a checkpoint save, a random time up to 3 s after launch (in
    start-up or compilation), inside a save again, a random time up to 0.3 s after
    the run saved a new step; resumes each time and lets the last launch finish.
    Returns (workdir, config, [where each kill landed])."""
    rng = random.Random(seed)
    config_path = tmp_path / "tiny.py"
    config_path.write_text(CONFIG.format(num_steps=num_steps, steps_per_call=STEPS_PER_CALL))
    wd = str(tmp_path / "killed")
    checkpoints = os.path.join(wd, "checkpoints")
    # The settings tests/conftest.py gives this process (XLA_FLAGS is inherited), so
    # that the killed runs compute exactly what the uninterrupted one here does.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    command = [sys.executable, "-m", "experiments.main", f"--config={config_path}", f"--workdir={wd}",
               "--mode=train"]
    moments = ["in a save", "at a random time after launch", "in a save", "at a random time after a save"]
    landed = []
    for launch in range(num_kills + 1):
        log = open(tmp_path / f"launch{launch}.log", "w")
        left_over = _temporary(checkpoints)
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if launch == num_kills:
                assert proc.wait(timeout=300) == 0, (tmp_path / f"launch{launch}.log").read_text()[-3000:]
                break
            moment = moments[launch % len(moments)]
            if moment == "at a random time after launch":
                time.sleep(rng.uniform(0.0, 3.0))
                alive = proc.poll() is None
            else:
                before = _newest_step(checkpoints)
                alive = _wait(proc, lambda: _newest_step(checkpoints) > before)
                if moment == "in a save":
                    alive = alive and _wait(proc, lambda: bool(_temporary(checkpoints) - left_over))
                else:
                    time.sleep(rng.uniform(0.0, 0.3))
            assert alive and proc.poll() is None, (
                f"the run finished before kill {launch}; raise num_steps\n"
                + (tmp_path / f"launch{launch}.log").read_text()[-3000:])
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # orbax renames its temporary directory when a save completes: a new one still
            # there means the kill cut a save
            cut_a_save = bool(_temporary(checkpoints) - left_over)
            landed.append("in a save" if cut_a_save else "right after a save" if moment == "in a save" else moment)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return wd, runpy.run_path(str(config_path))["get_config"](), landed


def _state_leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(
        (state.step, state.params, state.ema_params, state.opt_state, state.model_state,
         jax.random.key_data(state.run_key)))]


def _check_against_uninterrupted(tmp_path, wd, config, num_steps):
    whole = str(tmp_path / "whole")
    reference = config.copy_and_resolve_references()
    reference.train.checkpoint_every = num_steps  # how often it saves changes nothing it computes
    main.train(reference, whole, progress=False)
    _, expected = main._restore(config, whole)
    _, resumed = main._restore(config, wd)
    assert int(resumed.step) == num_steps
    for a, b in zip(_state_leaves(expected), _state_leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    records = read_metrics(os.path.join(wd, "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(STEPS_PER_CALL, num_steps + 1, STEPS_PER_CALL))
    expected_losses = [r["loss"] for r in read_metrics(os.path.join(whole, "metrics.jsonl"))]
    assert [r["loss"] for r in records] == expected_losses  # the logged losses too, bit for bit


def test_three_kills_then_resume_equals_an_uninterrupted_run(tmp_path):
    num_steps = 80
    wd, config, landed = _kill_and_resume(tmp_path, num_kills=3, num_steps=num_steps, seed=0)
    assert len(landed) == 3 and landed.count("in a save") >= 1, landed
    _check_against_uninterrupted(tmp_path, wd, config, num_steps)


@pytest.mark.slow  # thirteen launches of a training process
def test_twelve_kills_then_resume_equals_an_uninterrupted_run(tmp_path):
    num_steps = 400
    wd, config, landed = _kill_and_resume(tmp_path, num_kills=12, num_steps=num_steps, seed=1)
    assert len(landed) == 12 and landed.count("in a save") >= 4, landed
    _check_against_uninterrupted(tmp_path, wd, config, num_steps)
