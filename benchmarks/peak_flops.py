"""Peak matmul FLOP/s of the current device: the denominator of MFU.

    python -m benchmarks.peak_flops [--size N] [--dtype float32|bfloat16] [--repeats 5]

Times a jitted (N, N) @ (N, N) product (2 N^3 FLOPs) after a warm-up, median of
repeats, blocking on the result. The default N is 2048 on CPU and 8192 on
accelerators (large enough to saturate them). Matmul precision is "highest" for
float32, so GPUs report true float32 rather than TF32; pass --dtype bfloat16
for the bf16 peak (use the peak of the dtype the model's matmuls run in).
"""
import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import device_description, time_fn


def default_size() -> int:
    return 2048 if jax.default_backend() == "cpu" else 8192


def measure_peak_flops(size: int | None = None, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of one large square matmul on the default device."""
    n = size or default_size()
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    seconds = time_fn(matmul, a, b, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.size or default_size()
    print(f"device: {device_description()}")
    peak = measure_peak_flops(n, getattr(jnp, args.dtype), args.repeats)
    print(f"peak {args.dtype} matmul ({n}x{n}, median of {args.repeats}): {peak / 1e9:,.1f} GFLOP/s")


if __name__ == "__main__":
    main()
