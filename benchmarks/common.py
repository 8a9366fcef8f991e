"""Timing helpers shared by the benchmarks: warm up, then the median of repeats."""
import jax

from genjax import hardware


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1):
    """Median wall time of fn(*args) in seconds, blocking on the result."""
    return hardware.median_seconds(fn, *args, repeats=repeats, warmup=warmup)


def device_description() -> str:
    d = jax.devices()[0]
    return f"{jax.default_backend()} ({d.device_kind}, {jax.device_count()} device(s)), jax {jax.__version__}"
