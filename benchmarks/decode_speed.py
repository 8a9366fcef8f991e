r"""Decoding tokens/s at context 512: no cache vs KV cache vs speculative decoding.

    python -m benchmarks.decode_speed [--layers 4] [--width 256] [--new 64] \
        [--gamma 4] [--draft-layers 1] [--repeats 5] [--quick]
    python -m benchmarks.decode_speed --target-workdir=RUN --draft-workdir=DRAFT_RUN

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
not trained ones (said in the output): the tokens/s of the no-cache and KV-cache
decoders do not depend on the weights, but speculative decoding's depends on the
acceptance rate, which is printed, and a trained pair's differs. --quick: 2 layers
x width 64, 8 new tokens, 2 repeats.

With --target-workdir and --draft-workdir (two `experiments.main` LM runs on the
same bytes, e.g. configs/lm_stdlib.py and a smaller one; each run's config is its
saved one, `experiments.run_config.load_run`) the trained EMA weights decode
instead, the draft is that second model, the prompt is held-out text from byte
--prompt-offset on, the context is the models' max_len - gamma + 1, and the
generated text is printed (greedy text that loops inflates acceptance).
Each is jitted, warmed up and timed in alternation, median of --repeats.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_description, no_run_note, trained_config
from genjax.autoregressive import generate, speculative_generate
from genjax.nn.transformer import Transformer

CONTEXT = 512


def trained_pair(args):
    """(target, params, draft, draft params, held-out prompt, context) from two LM runs."""
    from experiments import text_source  # the experiment layer restores checkpoints

    if not (args.target_workdir and args.draft_workdir):
        raise SystemExit("--target-workdir and --draft-workdir go together")
    config, params, _ = text_source.restore_params(
        args.target_workdir, trained_config(args.target_workdir, "lm", flag="--target-workdir"))
    draft_config, draft_params, _ = text_source.restore_params(
        args.draft_workdir, trained_config(args.draft_workdir, "lm", flag="--draft-workdir"))
    target, draft = text_source.build_net(config), text_source.build_net(draft_config)
    context = min(target.max_len, draft.max_len) - args.gamma + 1
    if args.new >= context:
        raise SystemExit(f"--new={args.new} leaves no prompt in a context of {context}")
    heldout = text_source.load_text(config, "validation")
    prompt = heldout[args.prompt_offset: args.prompt_offset + context - args.new]
    return target, params, draft, draft_params, jnp.asarray(prompt, jnp.int32), context


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--draft-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-workdir", default=None, help="trained LM run (target)")
    parser.add_argument("--draft-workdir", default=None, help="trained LM run (draft)")
    parser.add_argument("--prompt-offset", type=int, default=0, help="where in the held-out bytes the prompt starts")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.width, args.heads, args.new, args.repeats = 2, 64, 2, 8, 2
    print(f"device: {device_description()}")

    if args.target_workdir or args.draft_workdir:
        target, params, draft, draft_params, prompt_P, context = trained_pair(args)
        print(f"trained target {args.target_workdir}: {target.num_layers} layers x width {target.d_model}; "
              f"trained draft {args.draft_workdir}: {draft.num_layers} layers x width {draft.d_model}")
    else:
        print(no_run_note("--target-workdir and --draft-workdir",
                          f"an untrained {args.layers}-layer transformer, width {args.width}, with its first "
                          f"{args.draft_layers} layer(s) as the draft",
                          "timings without and with the KV cache do not depend on training; speculative "
                          "decoding's depend on the acceptance rate, which a trained pair's differs"))
        context = CONTEXT
        kw = dict(vocab_size=256, d_model=args.width, num_heads=args.heads, max_len=CONTEXT + args.gamma)
        target = Transformer(num_layers=args.layers, **kw)
        draft = Transformer(num_layers=args.draft_layers, **kw)
        params = target.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        draft_params = {k: v for k, v in params.items() if not k.startswith("block_")}
        draft_params.update({f"block_{i}": params[f"block_{i}"] for i in range(args.draft_layers)})
        prompt_P = jax.random.randint(jax.random.key(1), (context - args.new,), 0, 256)
    P = context - args.new
    key = jax.random.key(2)

    @jax.jit
    def no_cache(params, prompt_P):
        buf = jnp.zeros((1, context), jnp.int32).at[0, :P].set(prompt_P)

        def body(t, buf):
            logits_BTV = target.apply({"params": params}, buf)
            nxt = jnp.argmax(logits_BTV[0, t - 1]).astype(jnp.int32)
            return buf.at[0, t].set(nxt)

        return jax.lax.fori_loop(P, context, body, buf)[0]

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
    if args.draft_workdir:  # the reader should see whether greedy text degenerated into a loop
        print(f"generated: {bytes(np.asarray(outs['KV cache'][P:], np.uint8)).decode('utf-8', 'replace')!r}")
    calls = int(stats["target_calls"])
    draft_name = "the draft run" if args.draft_workdir else f"its first {args.draft_layers} layer(s)"
    print(f"target {target.num_layers} layers x width {target.d_model}; draft: {draft_name}; "
          f"gamma {args.gamma}; prompt {P} + {args.new} new = {context} tokens, greedy, batch 1, "
          f"median of {args.repeats} after warm-up")
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
