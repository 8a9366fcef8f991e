"""Timing helpers shared by the benchmarks: warm up, then the median of repeats."""
import statistics
import time

import jax


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1):
    """Median wall time of fn(*args) in seconds, blocking on the result."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_description() -> str:
    d = jax.devices()[0]
    return f"{jax.default_backend()} ({d.device_kind}, {jax.device_count()} device(s)), jax {jax.__version__}"
