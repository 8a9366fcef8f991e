"""The one run loop: restore, place, train, guard, log, checkpoint.

Every script that trains (experiments.main, reflow, scaling, ablate, the digits
classifier) calls `run`; what differs between them is only which of these a call
turns on (a workdir for checkpoints and metrics, a progress bar, a log line).
"""
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from experiments import plots
from experiments.checkpoint import Checkpointer
from experiments.logging import MetricsLogger, read_metrics
from genjax import train as train_lib


def place_state(state, fsdp: int = 1):
    """(mesh, state on it): replicated over a `data` mesh of every device, or with
    fsdp > 1 sharded by `train.fsdp_shardings` over a ("data", "fsdp") mesh. Model
    state travels with the parameters it belongs to."""
    if not isinstance(fsdp, int) or fsdp < 1:
        raise ValueError(f"train.fsdp={fsdp!r}; expected a positive int (1: no parameter sharding)")
    if fsdp == 1:
        mesh = train_lib.default_mesh()
        return mesh, jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    mesh = train_lib.fsdp_mesh(fsdp)
    return mesh, train_lib.shard_state(state, mesh)


def check_steps(num_steps: int, steps_per_call: int, checkpoint_every: int | None = None) -> None:
    """num_steps and checkpoint_every must be multiples of steps_per_call (one
    compiled call runs that many steps)."""
    bad = num_steps % steps_per_call or (checkpoint_every is not None and checkpoint_every % steps_per_call)
    if bad:
        every = "" if checkpoint_every is None else f" and train.checkpoint_every ({checkpoint_every})"
        raise ValueError(f"train.num_steps ({num_steps}){every} must be multiples of "
                         f"train.steps_per_call ({steps_per_call})")


def _last(value, ensemble: bool):
    value = np.asarray(value)
    return value[..., -1] if ensemble else value[-1]


def run(state, make_step: Callable, *, num_steps: int, steps_per_call: int,
        workdir: str | None = None, checkpoint_every: int | None = None, keep_checkpoints: int = 3,
        fsdp: int = 1, place: bool = True, stop_after: int | None = None, progress: bool = False,
        desc: str = "train", rate_metrics: Callable | None = None, on_call: Callable | None = None,
        ensemble: bool = False, guard: bool = True, loss_plot: bool = True):
    """Trains `state` to num_steps; returns (state, metrics of every step run now).

    make_step(mesh) -> step(state) -> (state, metrics stacked over steps_per_call
    steps) is called once the state is placed (mesh None when place is False).

    workdir: resume from its newest checkpoint, append metrics to metrics.jsonl and
    TensorBoard, checkpoint every `checkpoint_every` steps and at the end, and plot
    loss.png. None: nothing is read or written (an ablation's members, a scaling run).
    stop_after: stop once this many steps are done (simulates an interruption; the
    state is checkpointed there). guard: stop with FloatingPointError at the first
    non-finite loss, naming the step and the last intact checkpoint. ensemble: the
    metrics have a leading member axis (K, steps); the guard is off for ensembles
    by default in `experiments.ablate`, where a diverged member is a result.
    rate_metrics(steps per second) -> extra logged values (e.g. MFU);
    on_call(step, metrics, seconds) is called after every compiled call.
    """
    check_steps(num_steps, steps_per_call, checkpoint_every)
    ckpt = Checkpointer(workdir, keep=keep_checkpoints) if workdir is not None else None
    logger = MetricsLogger(workdir) if workdir is not None else None
    try:
        if ckpt is not None:
            restored = ckpt.restore(state)
            if restored is not None:
                state = restored
        mesh = None
        if place:
            mesh, state = place_state(state, fsdp)
        step_fn = make_step(mesh)
        start = int(np.ravel(jax.device_get(state.step))[0]) if hasattr(state, "step") else 0
        end = num_steps if stop_after is None else min(stop_after, num_steps)
        bar = tqdm(total=num_steps, initial=start, disable=not progress, desc=desc, file=sys.stdout)
        history, step = [], start
        try:
            while step < end:
                t0 = time.perf_counter()
                state, metrics = step_fn(state)
                metrics = jax.device_get(metrics)
                seconds = time.perf_counter() - t0
                if guard:
                    _guard(metrics, step, ensemble, ckpt)
                step += steps_per_call
                history.append(metrics)
                rate = steps_per_call / seconds
                if logger is not None:
                    last = {k: _last(v, ensemble) for k, v in metrics.items()}
                    extra = rate_metrics(rate) if rate_metrics is not None else {}
                    logger.write(step, {**last, "steps_per_sec": rate, **extra})
                if progress:
                    bar.update(steps_per_call)
                    loss = np.mean(_last(metrics["loss"], ensemble))
                    bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{rate:.0f}")
                if on_call is not None:
                    on_call(step, metrics, seconds)
                if ckpt is not None and (step % checkpoint_every == 0 or step == end):
                    ckpt.save(step, state)
        finally:
            bar.close()
    finally:
        if logger is not None:
            logger.close()
        if ckpt is not None:
            ckpt.close()
    if workdir is not None and loss_plot:
        records = [r for r in read_metrics(logger.path) if "loss" in r]
        if records:
            plots.loss_curve(os.path.join(workdir, "loss.png"), [r["step"] for r in records],
                             [r["loss"] for r in records], title=f"{desc} loss")
    axis = 1 if ensemble else 0
    stacked = (jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=axis), *history)
               if history else {})
    return state, stacked


def _guard(metrics, step: int, ensemble: bool, ckpt) -> None:
    """Raises FloatingPointError at the first step whose loss (of any member) is not finite."""
    losses = np.asarray(metrics["loss"])  # (steps,) or, for an ensemble, (members, steps)
    finite = np.isfinite(losses.reshape(-1, losses.shape[-1])).all(axis=0)
    bad = train_lib.first_nonfinite(np.where(finite, 0.0, np.nan), step)
    if bad is None:
        return
    value = losses[..., bad - step]
    intact = (f"The last checkpoint (step {ckpt.latest_step()}) is intact; "
              if ckpt is not None and ckpt.latest_step() is not None else "No checkpoint was written yet; ")
    raise FloatingPointError(f"loss is {value} at step {bad}; stopping. {intact}"
                             f"lower optim.learning_rate or check the data.")
