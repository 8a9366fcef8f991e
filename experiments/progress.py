"""Progress of evaluations that take more than a few seconds: a bar on stdout.

An ODE likelihood over a test split, a density heatmap or an LM's validation
windows runs batch by batch (`map_batches`, or a loop over `bar`), and a tqdm bar
advances after each batch. The bar is shown only when the caller asks for it
(`progress=True`) and only by the process that writes (`experiments.distributed`:
every process of a multi-process run computes the same numbers). `genjax/` never
prints; the glue decides what to say.
"""
import sys
from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from experiments import distributed


def shown(progress: bool) -> bool:
    """Whether this process talks: asked to, and the writing process of the run."""
    return bool(progress) and distributed.is_writer()


def bar(total: int, desc: str, progress: bool = True, unit: str = "batch") -> tqdm:
    """A tqdm bar to stdout over `total` units; disabled unless `shown(progress)`."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stdout, disable=not shown(progress))


def say(progress: bool, *lines: str) -> None:
    """Prints each line (flushed) when `shown(progress)`."""
    if shown(progress):
        for line in lines:
            print(line, flush=True)


def wrote(path: str, progress: bool = True) -> None:
    """Says once that an evaluation wrote `path`."""
    say(progress, f"wrote {path}")


def num_batches(num: int, batch_size: int) -> int:
    return -(-int(num) // int(batch_size))


def map_batches(fn: Callable, x, batch_size: int, key, *, desc: str, progress: bool = True) -> np.ndarray:
    """fn(key_b, x_b) for the consecutive batches x_b of `batch_size` rows of x,
    concatenated (as numpy), one bar step per batch.

    key_b = fold_in(key, b) for batch b, so batches never share random draws
    (Hutchinson probes) and the result is a function of (key, batch_size). The last
    batch is padded to `batch_size` with copies of its last row and their outputs
    dropped, so one compiled program serves every batch. Padding with copies
    leaves an adaptive solver's steps unchanged: with the default per-batch error
    norm (`genjax.integrate.batch_max_rms_norm`) the steps are set by the batch's
    worst example, and a copy is no worse than its original. `fn` must treat the
    examples independently (a per-example log-density), so that a function
    without randomness and without batch-wide step control gives the same values
    for any batch size, up to float rounding.
    """
    x = np.asarray(x)
    num = len(x)
    if num == 0:
        raise ValueError(f"{desc}: no examples to evaluate")
    batch_size = max(1, min(int(batch_size), num))
    outputs = []
    with bar(num_batches(num, batch_size), desc, progress) as b:
        for i, start in enumerate(range(0, num, batch_size)):
            chunk = x[start:start + batch_size]
            real = len(chunk)
            if real < batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
            out = np.asarray(fn(jax.random.fold_in(key, i), chunk))
            outputs.append(out[:real])
            b.update(1)
    return np.concatenate(outputs)
