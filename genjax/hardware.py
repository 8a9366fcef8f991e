"""The device's peak matmul FLOP/s: the denominator of the model FLOPs utilisation
(MFU, Chowdhery et al. 2022, App. B; `genjax.train.mfu`).

The peak is measured, not looked up: a jitted (N, N) @ (N, N) product (2 N^3
FLOPs) is timed after a warm-up, median of repeats, blocking on the result. The
peak of an MFU must be the peak of the arithmetic the model's matmuls use: their
dtype, and for float32 the process's default matmul precision ("default": TF32 on
NVIDIA GPUs unless `jax_default_matmul_precision` says otherwise); "highest"
gives the true float32 peak.

A host-side measurement (it reads the clock), for a training driver's start-up or
a benchmark; not a function to trace. It prints nothing and touches no file.
"""
import statistics
import time

import jax
import jax.numpy as jnp

PRECISIONS = ("default", "highest")


def default_peak_size() -> int:
    """The matmul size N of `measure_peak_flops`: 2048 on CPU, 8192 on accelerators
    (large enough to saturate them)."""
    return 2048 if jax.default_backend() == "cpu" else 8192


def median_seconds(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn(*args) in seconds, blocking on the result."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_peak_flops(size: int | None = None, dtype=jnp.float32, repeats: int = 5,
                       precision: str = "default") -> float:
    """FLOP/s of one large square matmul of `size` (default `default_peak_size()`)
    on the default device.

    precision "default" runs it as the model's matmuls run (JAX's configured
    default precision); "highest" forces full float32 arithmetic.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected 'default' or 'highest'")
    n = size or default_peak_size()
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    precision = jax.lax.Precision.HIGHEST if precision == "highest" else None
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    seconds = median_seconds(matmul, a, b, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds
