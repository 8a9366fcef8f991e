"""The ensemble driver: picks how K members run on this backend.

On accelerators the members run batched (`jax.vmap`). On CPU neither choice wins
everywhere (benchmarks/ensemble.py on 2 cores: vmap is 1.16x faster than a loop for
a 3x32 MLP, but a loop is 1.9x faster for 3x512, where XLA:CPU's batched matmuls
lose), so "auto" times one call of each candidate and keeps the fastest.
"""
import time

import jax

from genjax import train


def _time_call(fn, states) -> float:
    jax.block_until_ready(fn(states))  # compile and warm up
    t0 = time.perf_counter()
    jax.block_until_ready(fn(states))
    return time.perf_counter() - t0


def ensemble_runner(train_fn, states, strategy: str = "auto", backend: str | None = None):
    """Returns (run, chosen strategy, {strategy: seconds per call timed}).

    `run(states) -> (states, metrics)` trains every member; all strategies give the
    same result. Timing calls are pure and their outputs discarded, so choosing
    does not advance the run.
    """
    backend = backend or jax.default_backend()
    if strategy != "auto":
        return train.make_ensemble_fn(train_fn, strategy), strategy, {}
    if backend != "cpu":
        return train.make_ensemble_fn(train_fn, "vmap"), "vmap", {}
    candidates = {name: train.make_ensemble_fn(train_fn, name) for name in train.ENSEMBLE_STRATEGIES}
    timings = {name: _time_call(fn, states) for name, fn in candidates.items()}
    best = min(timings, key=timings.get)
    return candidates[best], best, timings
