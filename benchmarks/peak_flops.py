"""Peak matmul FLOP/s of the current device: the denominator of MFU.

    python -m benchmarks.peak_flops [--size N] [--dtype float32|bfloat16] \
        [--precision default|highest] [--repeats 5]

A command line over `genjax.hardware.measure_peak_flops`, which times a jitted
(N, N) @ (N, N) product (2 N^3 FLOPs) after a warm-up, median of repeats. The
default N is 2048 on CPU and 8192 on accelerators. The peak of an MFU must be the
peak of the arithmetic the model's matmuls use: their dtype, and for float32 the
process's default matmul precision ("default": TF32 on NVIDIA GPUs unless
`jax_default_matmul_precision` says otherwise); --precision highest gives the
true float32 peak.
"""
import argparse

import jax.numpy as jnp

from benchmarks.common import device_description
from genjax.hardware import PRECISIONS, default_peak_size, measure_peak_flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--precision", choices=PRECISIONS, default="default")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.size or default_peak_size()
    print(f"device: {device_description()}")
    peak = measure_peak_flops(n, getattr(jnp, args.dtype), args.repeats, args.precision)
    print(f"peak {args.dtype} matmul, {args.precision} precision ({n}x{n}, median of {args.repeats}): "
          f"{peak / 1e9:,.1f} GFLOP/s")


if __name__ == "__main__":
    main()
