r"""Training tokens/s and MFU of the transformer LM at two model sizes, one run.

    python -m benchmarks.lm_train_speed [--context 256] [--batch 16] [--steps 3] \
        [--repeats 5] [--dtype float32|bfloat16] [--attention auto] [--layer-norm auto] [--gelu-kernel auto] \
        [--sizes small,medium] [--quick]

Sizes: "small" (2 layers, width 128, 4 heads), "medium" (4 layers, width 256,
4 heads) and, for accelerators, "large" (12 layers, width 768, 12 heads), byte vocabulary, AdamW through `genjax.train`. The peak is measured
first with a large matmul (`genjax.hardware.measure_peak_flops`) in the same dtype; then
each size is warmed up and the two are timed in alternation, median of
--repeats rounds of --steps jitted steps. MFU = tokens/s x flops_per_token / peak
(`genjax.train.mfu`, with `Transformer.flops_per_token` = 6N + 6 n_layer n_ctx
d_model at the training context). Prints both and the medium/small ratios. The
models train from their initialization on random bytes (no trained run is read:
the time of a step does not depend on the weights). --quick: context 32, batch 2,
1 step, 2 repeats.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.common import device_description
from experiments import cpu_kernels
from genjax import train
from genjax.hardware import measure_peak_flops
from genjax.autoregressive import make_lm
from genjax.nn.transformer import Transformer

SIZES = {
    "small": dict(num_layers=2, d_model=128, num_heads=4),
    "medium": dict(num_layers=4, d_model=256, num_heads=4),
    "large": dict(num_layers=12, d_model=768, num_heads=12),  # GPT-2 small's blocks: for accelerators
}


def make_step(size, args):
    kw = dict(vocab_size=256, max_len=args.context, dtype=getattr(jnp, args.dtype),
              **cpu_kernels.kernel_options(args.attention, args.layer_norm, args.gelu_kernel))
    lm = make_lm(**SIZES[size], **kw)
    net = Transformer(**SIZES[size], **kw)
    tx, _ = train.make_optimizer(learning_rate=3e-4, total_steps=10**6, schedule="constant", weight_decay=0.1)
    tokens = jax.random.randint(jax.random.key(0), (1, args.batch, args.context + 1), 0, 256)
    state = train.init_state(lm.init, tx, jax.random.key(1), {"tokens": tokens[0]})
    fn = jax.jit(train.make_train_fn(lm.loss, tx, unroll=True), donate_argnums=0)
    box = [state]

    def step():
        box[0], metrics = fn(box[0], {"tokens": tokens})
        return metrics["loss"]

    return net, step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--layer-norm", default="auto")
    parser.add_argument("--gelu-kernel", default="auto")
    parser.add_argument("--sizes", default="small,medium", help=f"two or more of {sorted(SIZES)}")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.context, args.batch, args.steps, args.repeats = 32, 2, 1, 2
    sizes = args.sizes.split(",")
    if len(sizes) < 2 or any(s not in SIZES for s in sizes):
        parser.error(f"--sizes={args.sizes!r}; expected two or more of {sorted(SIZES)}, comma-separated")
    print(f"device: {device_description()}")
    peak = measure_peak_flops(dtype=getattr(jnp, args.dtype))
    print(f"measured peak ({args.dtype} matmul): {peak / 1e9:,.1f} GFLOP/s")
    print(f"batch {args.batch} x context {args.context}, {args.steps} step(s) per timing, median of "
          f"{args.repeats} after warm-up; trained from initialization on random bytes (no trained run is read)")

    steps, nets = {}, {}
    for size in sizes:
        nets[size], steps[size] = make_step(size, args)
        for _ in range(2):  # compile + warm-up
            jax.block_until_ready(steps[size]())
    times = {size: [] for size in sizes}
    for r in range(args.repeats):
        for size in (sizes if r % 2 == 0 else sizes[::-1]):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = steps[size]()
            jax.block_until_ready(loss)
            times[size].append((time.perf_counter() - t0) / args.steps)

    tokens_per_step = args.batch * args.context
    rates = {}
    for size in sizes:
        net = nets[size]
        rate = tokens_per_step / statistics.median(times[size])
        fpt = net.flops_per_token(n_ctx=args.context)
        rates[size] = rate
        print(f"{size:6s} ({net.num_layers} layers, width {net.d_model}, N = {net.num_params(non_embedding=True):,} "
              f"non-embedding): {rate:,.0f} tokens/s, {fpt / 1e6:.1f} MFLOP/token, "
              f"MFU {100 * train.mfu(rate, fpt, peak):.1f}%")
    big, small = sizes[-1], sizes[0]
    print(f"ratio {big}/{small} tokens/s: {rates[big] / rates[small]:.2f}x; FLOPs/token ratio "
          f"{nets[big].flops_per_token(n_ctx=args.context) / nets[small].flops_per_token(n_ctx=args.context):.2f}x")


if __name__ == "__main__":
    main()
