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

from experiments import distributed, plots
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
    return _at(value, -1, ensemble)


def _at(value, i: int, ensemble: bool):
    """Entry i of a call's stacked metric: (steps,), or (members, steps) for an ensemble."""
    value = np.asarray(value)
    return value[..., i] if ensemble else value[i]


def logged_steps(first: int, count: int, log_every: int | None) -> list:
    """Indices i (0..count-1) of a call's steps to log; the call ran steps first+1 ..
    first+count (counted as done). Those at multiples of log_every, and always the
    call's last; only the last when log_every is None."""
    if log_every is None:
        return [count - 1]
    return [i for i in range(count) if (first + i + 1) % log_every == 0 or i == count - 1]


def run(state, make_step: Callable, *, num_steps: int, steps_per_call: int,
        workdir: str | None = None, checkpoint_every: int | None = None, keep_checkpoints: int = 3,
        fsdp: int = 1, place: bool = True, stop_after: int | None = None, progress: bool = False,
        desc: str = "train", rate_metrics: Callable | None = None, on_call: Callable | None = None,
        ensemble: bool = False, guard: bool = True, loss_plot: bool = True,
        spike_factor: float = 0.0, spike_window: int = 100, log_every: int | None = None):
    """Trains `state` to num_steps; returns (state, metrics of every step run now).

    make_step(mesh) -> step(state) -> (state, metrics stacked over steps_per_call
    steps) is called once the state is placed (mesh None when place is False).

    workdir: resume from its newest intact checkpoint (`experiments.checkpoint`),
    cut metrics.jsonl and TensorBoard back to the steps that checkpoint had done and
    append from there (so after any number of crashes and resumes each step is
    logged once), checkpoint every `checkpoint_every` steps and at the end, and
    plot loss.png; in a multi-process run every process checkpoints (orbax
    coordinates them) and process 0 alone logs and plots. None: nothing is read
    or written (an ablation's members, a scaling run).
    stop_after: stop once this many steps are done (simulates an interruption; the
    state is checkpointed there).
    guard: stop with FloatingPointError at the first step with a non-finite loss,
    gradient norm (also any group's "<group>/loss" and "<group>/grad_norm") or
    parameter (the train step's `params_finite` flag), naming the step, the
    signals and the newest intact checkpoint; the bad state is neither logged nor
    saved. spike_factor > 0 (train.spike_factor) also stops, with LossSpikeError,
    at a finite loss above spike_factor times the median loss of the previous
    spike_window steps run by this process (only while that median is positive:
    a rule for losses that stay positive). ensemble: the metrics have a leading
    member axis (K, steps); the guard then watches every member, but is off in
    `experiments.ablate`, where a diverged member is a result.
    log_every: write the metrics of every step that is a multiple of it (steps
    counted as done, 1-based), whatever train.steps_per_call is, and of the last
    step of every call (which also gets steps_per_sec); None: only the last step
    of each call.
    rate_metrics(steps per second) -> extra logged values (e.g. MFU);
    on_call(step, metrics, seconds) is called after every compiled call.
    The last record of every call also gets train_seconds: the cumulative wall
    time of the compiled calls (compilation included) since the run's step 0,
    carried over a resume from the last record the checkpoint kept (checkpoint
    saves, restores and evaluation are not counted).
    """
    check_steps(num_steps, steps_per_call, checkpoint_every)
    spikes = _SpikeRule(spike_factor, spike_window) if guard and spike_factor else None
    ckpt = Checkpointer(workdir, keep=keep_checkpoints) if workdir is not None else None
    logger = None
    try:
        if ckpt is not None:
            restored = ckpt.restore(state)
            if restored is not None:
                state = restored
        start = int(np.ravel(jax.device_get(state.step))[0]) if hasattr(state, "step") else 0
        if workdir is not None and distributed.is_writer():  # the others compute the same metrics
            logger = MetricsLogger(workdir, resume_step=start)
        train_seconds = previous_train_seconds(logger.path) if logger is not None else 0.0
        mesh = None
        if place:
            mesh, state = place_state(state, fsdp)
        step_fn = make_step(mesh)
        end = num_steps if stop_after is None else min(stop_after, num_steps)
        if progress and start and workdir is not None:
            print(f"resuming from step {start} of {num_steps} ({ckpt.directory})", flush=True)
        bar = tqdm(total=num_steps, initial=start, disable=not progress, desc=desc, file=sys.stdout)
        history, step = [], start
        try:
            while step < end:
                t0 = time.perf_counter()
                state, metrics = step_fn(state)
                metrics = jax.device_get(metrics)
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                if guard:
                    _guard(metrics, step, ensemble, ckpt, workdir)
                    if spikes is not None:
                        spikes.check(metrics["loss"], step, ensemble, ckpt, workdir)
                step += steps_per_call
                history.append(metrics)
                rate = steps_per_call / seconds
                if logger is not None:
                    first = step - steps_per_call
                    logged = logged_steps(first, steps_per_call, log_every)
                    for i in logged[:-1]:
                        logger.write(first + i + 1, {k: _at(v, i, ensemble) for k, v in metrics.items()})
                    last = {k: _last(v, ensemble) for k, v in metrics.items()}
                    extra = rate_metrics(rate) if rate_metrics is not None else {}
                    logger.write(step, {**last, "steps_per_sec": rate, "train_seconds": train_seconds, **extra})
                if progress:
                    bar.update(steps_per_call)
                    loss = np.mean(_last(metrics["loss"], ensemble))
                    bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{rate:.0f}")
                if on_call is not None:
                    on_call(step, metrics, seconds)
                if ckpt is not None and (step % checkpoint_every == 0 or step == end):
                    if logger is not None:
                        logger.flush()  # every step a checkpoint holds is in the logs on disk
                    ckpt.save(step, state)
        finally:
            bar.close()
    finally:
        if logger is not None:
            logger.close()
        if ckpt is not None:
            ckpt.close()
    if logger is not None and loss_plot:
        records = [r for r in read_metrics(logger.path) if "loss" in r]
        if records:
            plots.loss_curve(os.path.join(workdir, "loss.png"), [r["step"] for r in records],
                             [r["loss"] for r in records], title=f"{desc} loss")
    axis = 1 if ensemble else 0
    stacked = (jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=axis), *history)
               if history else {})
    return state, stacked


def previous_train_seconds(path: str) -> float:
    """The cumulative train_seconds of the last record in the metrics file at
    `path` that has it (0.0 for a new run). A run logged before train_seconds was
    recorded counts its earlier calls from their steps_per_sec instead."""
    if not os.path.exists(path):
        return 0.0
    total, prev = 0.0, 0
    for r in read_metrics(path):
        if "train_seconds" in r:
            total, prev = float(r["train_seconds"]), r["step"]
        elif "steps_per_sec" in r and r["step"] > prev:
            total += (r["step"] - prev) / r["steps_per_sec"]
            prev = r["step"]
    return total


def _is_guard_signal(name: str) -> bool:
    """The metrics the guard reads: the loss and gradient norm (also each parameter
    group's) and the train step's `params_finite` flag."""
    return name in ("loss", "grad_norm", "params_finite") or name.endswith(("/loss", "/grad_norm"))


def _checkpoint_note(ckpt, workdir) -> str:
    """Where the run can be resumed from, for a message that stops it."""
    if workdir is None:
        return "This run keeps no checkpoints (no workdir)."
    step = ckpt.latest_step() if ckpt is not None else None
    if step is None:
        return f"No checkpoint was written yet in {workdir}."
    return f"The newest intact checkpoint is step {step} in {ckpt.directory}."


def _guard(metrics, step: int, ensemble: bool, ckpt, workdir=None) -> None:
    """Raises FloatingPointError at the first step of this call at which any guard
    signal (of any member) is not finite, naming that step, every signal bad there
    and the newest intact checkpoint. Step s is the step that starts from
    TrainState.step = s: its loss and gradient are taken at the parameters of step
    s. `params_finite` checks the parameters the call leaves (its last entry)."""
    finite = {}
    order = lambda name: (name == "params_finite", "/" in name, name != "loss", name)  # noqa: E731
    for name in sorted(filter(_is_guard_signal, metrics), key=order):
        value = np.asarray(metrics[name])  # (steps,) or, for an ensemble, (members, steps)
        ok = value.astype(bool) if name == "params_finite" else np.isfinite(value)
        finite[name] = ok.reshape(-1, ok.shape[-1])  # (members, steps)
    if not finite:
        return
    every = np.stack([ok.all(axis=0) for ok in finite.values()]).all(axis=0)
    bad = train_lib.first_nonfinite(np.where(every, 0.0, np.nan), step)
    if bad is None:
        return
    i = bad - step
    parts, note = [], ""
    for name, ok in finite.items():
        members = np.flatnonzero(~ok[:, i])
        if not members.size:
            continue
        if name == "params_finite":
            what = "a parameter is not finite after the update"
            if ok.shape[-1] > 1:
                note = (f" (parameters are checked at the end of each call; this one ran steps {step} "
                        f"to {step + ok.shape[-1] - 1})")
        else:
            values = np.asarray(metrics[name]).reshape(-1, ok.shape[-1])[members, i]
            what = f"{name} is {values[0] if values.size == 1 else values.tolist()}"
        parts.append(what + (f" (members {members.tolist()})" if ensemble else ""))
    raise FloatingPointError(f"{'; '.join(parts)} at step {bad}{note}; stopping without saving or logging this "
                             f"state. {_checkpoint_note(ckpt, workdir)} Lower optim.learning_rate or check "
                             f"the data.")


class LossSpikeError(FloatingPointError):
    """A finite loss far above its recent median (train.spike_factor); a
    FloatingPointError so that callers stopping on divergence treat both alike."""


class _SpikeRule:
    """loss > factor x median of the previous `window` step losses (per member),
    checked only once `window` losses were seen and while that median is positive."""

    def __init__(self, factor: float, window: int):
        if not factor > 1 or int(window) != window or window < 1:
            raise ValueError(f"train.spike_factor={factor!r}, train.spike_window={window!r}; expected a "
                             f"factor > 1 (0: off) and a positive window of steps")
        self.factor, self.window = float(factor), int(window)
        self.recent = None  # (members, <= window) losses of the latest steps

    def check(self, losses, step: int, ensemble: bool, ckpt, workdir) -> None:
        losses = np.asarray(losses, np.float64)
        losses = losses.reshape(-1, losses.shape[-1])  # (members, steps)
        for i in range(losses.shape[1]):
            loss = losses[:, i]
            if self.recent is not None and self.recent.shape[1] == self.window:
                median = np.median(self.recent, axis=1)
                spiked = np.flatnonzero((median > 0) & (loss > self.factor * median))
                if spiked.size:
                    m = int(spiked[0])
                    member = f" (member {m})" if ensemble else ""
                    raise LossSpikeError(
                        f"loss is {loss[m]:.6g} at step {step + i}{member}, more than train.spike_factor="
                        f"{self.factor:g} times the median {median[m]:.6g} of the previous {self.window} "
                        f"steps; stopping without saving or logging this state. "
                        f"{_checkpoint_note(ckpt, workdir)}")
            column = loss[:, None]
            self.recent = column if self.recent is None else np.concatenate(
                [self.recent, column], axis=1)[:, -self.window:]
