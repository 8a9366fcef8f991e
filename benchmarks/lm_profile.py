"""Where a training step's time goes: genjax's transformer against PyTorch, per op.

    python -m benchmarks.lm_profile [--layers 4] [--width 256] [--steps 3]

The model, batch and optimizer of `benchmarks.lm_vs_torch`. genjax: the compiled
step is traced with `jax.profiler` (a Perfetto trace), each executed HLO op is
mapped to the model code it came from by its `op_name` metadata, and the times
are summed by group (per-layer names merged; "bwd" marks ops of the backward
pass). PyTorch: `torch.profiler` self CPU time per aten op. Both are per step,
averaged over --steps profiled steps after a warm-up; run with nothing else on
the machine.
"""
import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import numpy as np
import torch

from benchmarks import lm_vs_torch


def op_groups(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> 'fwd|bwd <model path>' from its op_name metadata."""
    groups = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*op_name=\"([^\"]+)\"", line)
        if not m:
            continue
        path = re.sub(r"block_\d+", "block_*", m.group(2))
        direction = "bwd" if "transpose(" in path else "fwd"
        path = re.sub(r"^jit\([^)]*\)/", "", path)
        path = re.sub(r"(transpose\()?(jvp\()?(jit\()?", "", path).replace(")", "")
        groups[m.group(1)] = f"{direction} {path.replace('Transformer._forward/', '')}"
    return groups


def jax_profile(args, tokens_np, num_steps):
    step_fn, state, batches = lm_vs_torch.genjax_step(args, tokens_np)
    groups = op_groups(step_fn.lower(state, batches).compile().as_text())
    for _ in range(3):
        state, metrics = step_fn(state, batches)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(num_steps):
                state, metrics = step_fn(state, batches)
            jax.block_until_ready(metrics)
        (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_group = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in groups:
            per_group[groups[e["name"]]] += e["dur"] / 1e3 / num_steps
    return per_group


def torch_profile(args, tokens_np, num_steps):
    _, step = lm_vs_torch.torch_trainer(args, tokens_np)
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(num_steps):
            step()
    return {e.key: e.self_cpu_time_total / 1e3 / num_steps for e in prof.key_averages()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lm_vs_torch.add_model_args(parser)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--attention", default="auto", help="genjax Transformer.attention")
    args = parser.parse_args()
    args.gelu = "tanh"
    tokens_np = np.random.default_rng(0).integers(0, 256, (args.batch, args.context + 1), dtype=np.int32)

    jax_ms = jax_profile(args, tokens_np, args.steps)
    torch_ms = torch_profile(args, tokens_np, args.steps)
    print(f"genjax: {sum(jax_ms.values()):.0f} ms of ops per step; by model code (all layers summed):")
    for name, ms in jax_ms.most_common(args.top):
        print(f"  {ms:7.1f} ms  {name[:100]}")
    coarse = collections.Counter()
    for name, ms in jax_ms.items():
        part = ("attention core" if "/attn/" in name and not re.search(r"/attn/(qkv|out)/", name) else
                "dense matmuls" if re.search(r"/(qkv|out|fc|proj)/dot_general|btd,dv->btv", name) else
                "layer norms" if re.search(r"/ln\d?|ln_f", name) else "other")
        coarse[part] += ms
    print("genjax by part: " + ", ".join(f"{k} {v:.0f} ms" for k, v in coarse.most_common()))
    top = sorted(torch_ms.items(), key=lambda kv: -kv[1])[: args.top]
    print(f"torch: {sum(torch_ms.values()):.0f} ms self CPU time per step; top ops:")
    for name, ms in top:
        print(f"  {ms:7.1f} ms  {name[:100]}")


if __name__ == "__main__":
    main()
