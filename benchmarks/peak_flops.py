"""Peak matmul FLOP/s of the current device: the denominator of MFU.

    python -m benchmarks.peak_flops [--size N] [--dtype float32|bfloat16] \
        [--precision default|highest] [--repeats 5]

Times a jitted (N, N) @ (N, N) product (2 N^3 FLOPs) after a warm-up, median of
repeats, blocking on the result. The default N is 2048 on CPU and 8192 on
accelerators (large enough to saturate them). The peak of an MFU must be the
peak of the arithmetic the model's matmuls use: their dtype, and for float32
the process's default matmul precision ("default": TF32 on NVIDIA GPUs unless
`jax_default_matmul_precision` says otherwise); --precision highest gives the
true float32 peak.
"""
import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import device_description, time_fn


def default_size() -> int:
    return 2048 if jax.default_backend() == "cpu" else 8192


def measure_peak_flops(size: int | None = None, dtype=jnp.float32, repeats: int = 5,
                       precision: str = "default") -> float:
    """FLOP/s of one large square matmul on the default device.

    precision "default" runs it as the model's matmuls run (JAX's configured
    default precision); "highest" forces full float32 arithmetic.
    """
    if precision not in ("default", "highest"):
        raise ValueError(f"precision={precision!r}; expected 'default' or 'highest'")
    n = size or default_size()
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    precision = jax.lax.Precision.HIGHEST if precision == "highest" else None
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    seconds = time_fn(matmul, a, b, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--precision", choices=("default", "highest"), default="default")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.size or default_size()
    print(f"device: {device_description()}")
    peak = measure_peak_flops(n, getattr(jnp, args.dtype), args.repeats, args.precision)
    print(f"peak {args.dtype} matmul, {args.precision} precision ({n}x{n}, median of {args.repeats}): "
          f"{peak / 1e9:,.1f} GFLOP/s")


if __name__ == "__main__":
    main()
