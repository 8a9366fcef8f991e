"""Metrics to JSON lines and TensorBoard event files, and a progress bar.

A run resumed from the checkpoint of step s opens its logger with resume_step=s:
metrics.jsonl is first cut back to the records of steps <= s (rewritten
atomically), and TensorBoard is told to hide the events of steps > s written by
the process that crashed (tensorboardX's `purge_step`, a SessionLog.START event
that TensorBoard's reader honours). The steps after s are then logged by the
resumed run only, so after any number of crashes and resumes metrics.jsonl holds
each step once, and TensorBoard shows each step once. The run loop flushes the
TensorBoard events before every checkpoint, so the steps a checkpoint holds are
in both logs on disk when it is written.
"""
import itertools
import json
import os

import numpy as np
from tensorboardX import SummaryWriter

_writers = itertools.count()


class MetricsLogger:
    """Appends {step, **metrics} to `<workdir>/metrics.jsonl` and TensorBoard.

    resume_step: the step of the state the run starts from (0 for a new run); the
    records of later steps, left by a run that stopped without checkpointing
    them, are dropped first. None appends to what is there (an evaluation
    of the newest state)."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None:
            keep_records_through(self.path, resume_step)
        self._file = open(self.path, "a")
        purge = None if resume_step is None else int(resume_step) + 1
        # tensorboardX names its file by the second and the host alone; a writer
        # opened within the same second (a quick resume) would overwrite the last.
        unique = f".{os.getpid()}.{next(_writers)}"
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge, filename_suffix=unique)

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        record = {"step": int(step)}
        for name, value in metrics.items():
            value = np.asarray(value)
            if value.size != 1 or not np.issubdtype(value.dtype, np.number):
                continue
            record[prefix + name] = float(value)
            self._tb.add_scalar(prefix + name, float(value), int(step))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def flush(self) -> None:
        """Puts the TensorBoard events written so far on disk (metrics.jsonl is
        flushed at every record). Called before each checkpoint, so that a crash
        loses no event of a step the checkpoint holds; not at every record, where
        it would cost about 1.5 ms."""
        self._tb.flush()

    def close(self):
        self._file.close()
        self._tb.close()


def write_atomically(path: str, text: str) -> None:
    """Replaces `path` with `text` in one rename (temporary file, fsync, rename), so a
    reader, or a crash, sees the old file or the whole new one, never a mix."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def keep_records_through(path: str, step: int) -> int:
    """Rewrites the JSON-lines log at `path` with only its records of steps <= step
    (training and evaluation records alike) and drops a line cut short by a crash;
    returns how many records were dropped. The new file replaces the old in one
    rename, so a crash here leaves one or the other, never a mix."""
    if not os.path.exists(path):
        return 0
    kept, dropped, unterminated = [], 0, False
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # the last line of a process killed while writing it
                dropped += 1
                continue
            if record.get("step", 0) <= step:
                unterminated |= not line.endswith("\n")
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if not dropped and not unterminated:
        return 0
    write_atomically(path, "".join(kept))
    return dropped


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
