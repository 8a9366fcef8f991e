r"""Peak matmul FLOP/s of the current device: the denominator of MFU.

    python -m benchmarks.peak_flops [--size N] [--dtype float32|bfloat16] \
        [--precision default|highest] [--repeats 5] [--quick]

A command line over `genjax.hardware.measure_peak_flops`, which times a jitted
(N, N) @ (N, N) product (2 N^3 FLOPs) after a warm-up, median of repeats. The
default N is 2048 on CPU and 8192 on accelerators. The peak of an MFU must be the
peak of the arithmetic the model's matmuls use: their dtype, and for float32 the
process's default matmul precision ("default": TF32 on NVIDIA GPUs unless
`jax_default_matmul_precision` says otherwise); --precision highest gives the
true float32 peak. The baseline, timed in the same run the same way: numpy's
matmul (its BLAS, on the host) of the same float32 product; the ratio says what
XLA gets out of the device relative to it. No model is involved. --quick: N =
256, 2 repeats.
"""
import argparse
import statistics
import time

import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_description
from genjax.hardware import PRECISIONS, default_peak_size, measure_peak_flops


def numpy_flops(n: int, repeats: int) -> float:
    """FLOP/s of numpy's float32 (n, n) @ (n, n), median of `repeats` after a warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--precision", choices=PRECISIONS, default="default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 256, 2
    n = args.size or default_peak_size()
    print(f"device: {device_description()}")
    peak = measure_peak_flops(n, getattr(jnp, args.dtype), args.repeats, args.precision)
    baseline = numpy_flops(n, args.repeats)
    print(f"peak {args.dtype} matmul, {args.precision} precision ({n}x{n}, median of {args.repeats}): "
          f"{peak / 1e9:,.1f} GFLOP/s")
    print(f"numpy float32 matmul on the host ({n}x{n}, median of {args.repeats}): {baseline / 1e9:,.1f} GFLOP/s")
    print(f"ratio jax/numpy: {peak / baseline:.2f}x")


if __name__ == "__main__":
    main()
