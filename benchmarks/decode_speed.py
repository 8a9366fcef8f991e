"""Decoding tokens/s at context 512: no cache vs KV cache vs speculative decoding.

    python -m benchmarks.decode_speed [--layers 4] [--width 256] [--new 64] \
        [--gamma 4] [--draft-layers 1] [--repeats 5]

One sequence, greedy (temperature 0), a prompt of 512 - new tokens, `new`
tokens generated, so the last ones attend over the full 512-token context.
  no cache:    every new token is a full forward pass over the fixed 512-token
               buffer (a jitted `lax.fori_loop`), reading the logits at t - 1;
  KV cache:    `genjax.autoregressive.generate` (prefill, then one cached step
               per token);
  speculative: `speculative_generate` with a self-speculative draft: the
               target's own first --draft-layers blocks with its embeddings,
               final LayerNorm and unembedding (as in layer-skipping drafts,
               Zhang et al. 2023), so no second model has to be trained.
All three produce the same tokens (greedy speculative decoding reproduces the
target exactly; checked here). The weights are the standard initialization,
not trained ones: the acceptance rate is printed, and a trained pair's differs.
Each is jitted, warmed up and timed in alternation, median of --repeats.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_description
from genjax.autoregressive import generate, speculative_generate
from genjax.nn.transformer import Transformer

CONTEXT = 512


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--draft-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"device: {device_description()}")

    kw = dict(vocab_size=256, d_model=args.width, num_heads=args.heads, max_len=CONTEXT + args.gamma)
    target = Transformer(num_layers=args.layers, **kw)
    draft = Transformer(num_layers=args.draft_layers, **kw)
    P = CONTEXT - args.new
    params = target.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    draft_params = {k: v for k, v in params.items() if not k.startswith("block_")}
    draft_params.update({f"block_{i}": params[f"block_{i}"] for i in range(args.draft_layers)})
    prompt_P = jax.random.randint(jax.random.key(1), (P,), 0, 256)
    key = jax.random.key(2)

    @jax.jit
    def no_cache(params, prompt_P):
        buf = jnp.zeros((1, CONTEXT), jnp.int32).at[0, :P].set(prompt_P)

        def body(t, buf):
            logits_BTV = target.apply({"params": params}, buf)
            nxt = jnp.argmax(logits_BTV[0, t - 1]).astype(jnp.int32)
            return buf.at[0, t].set(nxt)

        return jax.lax.fori_loop(P, CONTEXT, body, buf)[0]

    def cached(params, prompt_P):
        return generate(target, params, key, prompt_P[None], max_new_tokens=args.new, temperature=0.0)[0]

    def speculative(params, prompt_P):
        return speculative_generate(
            target, params, draft, draft_params, key, prompt_P,
            max_new_tokens=args.new, gamma=args.gamma, temperature=0.0,
        )

    outs = {"no cache": no_cache(params, prompt_P), "KV cache": cached(params, prompt_P)}
    spec_tokens, stats = speculative(params, prompt_P)
    outs["speculative"] = spec_tokens
    for name in ("KV cache", "speculative"):
        if not np.array_equal(outs[name], outs["no cache"]):
            raise SystemExit(f"{name} tokens differ from the uncached greedy tokens")
    calls = int(stats["target_calls"])
    print(f"target {args.layers} layers x width {args.width}; draft: its first {args.draft_layers} layer(s); "
          f"gamma {args.gamma}; prompt {P} + {args.new} new = {CONTEXT} tokens, greedy, batch 1")
    print(f"speculative: {int(stats['accepted'])} of {calls * args.gamma} drafts accepted, "
          f"{calls} target calls for {args.new} tokens")

    fns = {"no cache": no_cache, "KV cache": cached, "speculative": speculative}
    for fn in fns.values():
        jax.block_until_ready(fn(params, prompt_P))
    times = {name: [] for name in fns}
    for r in range(args.repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name](params, prompt_P))
            times[name].append(time.perf_counter() - t0)
    rate = {name: args.new / statistics.median(ts) for name, ts in times.items()}
    for name in fns:
        print(f"{name:12s}: {rate[name]:8.1f} tokens/s")
    print(f"ratio KV cache / no cache: {rate['KV cache'] / rate['no cache']:.2f}x; "
          f"speculative / KV cache: {rate['speculative'] / rate['KV cache']:.2f}x; "
          f"speculative / no cache: {rate['speculative'] / rate['no cache']:.2f}x")


if __name__ == "__main__":
    main()
