"""Metrics to JSON lines and TensorBoard event files, and a progress bar."""
import json
import os

import numpy as np
from tensorboardX import SummaryWriter


class MetricsLogger:
    """Appends {step, **metrics} to `<workdir>/metrics.jsonl` and TensorBoard."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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

    def close(self):
        self._file.close()
        self._tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
