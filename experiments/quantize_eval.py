"""A trained LM with weight-only int8 / int4 quantization against float32.

    python -m experiments.quantize_eval --workdir=RUN [--num_windows=N] [--compress_files=N]
        [--group_size=64] [--embeddings] [--json=OUT.json]

For float32, int8 (per output channel) and int4 (groups of --group_size inputs)
weights (`genjax.nn.quantize`) of the run's newest EMA parameters, reports:
  - bits/byte on the held-out (validation) split: the cross-entropy of
    consecutive data.seq_len windows (all of them, or --num_windows evenly spaced);
  - parameter bytes (int4 counted packed, two per byte; scales float32);
  - KV-cached decode tokens/s: `decode.generate`, batch 1, 200 new bytes after
    the config's prompt, greedy; the second of two timed calls (the first compiles);
  - with --compress_files=N: the range coder on the first N held-out files in
    path order, coded bits/byte, each round trip checked byte-exact.
The quantized tree goes to the model as is and is dequantized inside each jitted
forward (`genjax.nn.quantize.Dequantized`).
"""
import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import compress, text_source
from genjax.autoregressive.decode import generate
from genjax.autoregressive.lm import token_nll
from genjax.data import text
from genjax.nn import quantize as quant

WIDTHS = ("float32", "int8", "int4")
DECODE_TOKENS = 200


def quantized_params(params, width: str, *, group_size: int, embeddings: bool):
    if width == "float32":
        return params
    return quant.quantize(params, bits=int(width[3:]), group_size=group_size, embeddings=embeddings)


def heldout_bits_per_byte(net, params, config, num_windows: int | None) -> tuple:
    """(bits/byte, windows) of the validation split's consecutive seq_len windows."""
    windows = text.eval_windows(text_source.load_text(config, "validation"), config.data.seq_len)
    if num_windows and num_windows < len(windows):
        windows = windows[np.linspace(0, len(windows) - 1, num_windows).astype(int)]

    @jax.jit
    def nats_sum(p, w):
        logits = net.apply({"params": p}, w[:, :-1])
        return jnp.sum(token_nll(logits, w[:, 1:]))

    total, chunk = 0.0, int(config.eval.batch_size)
    for i in range(0, len(windows), chunk):
        total += float(nats_sum(params, jnp.asarray(windows[i:i + chunk])))
    return total / (windows.shape[0] * (windows.shape[1] - 1)) / math.log(2), len(windows)


def decode_tokens_per_second(net, params, config) -> float:
    prompt = np.frombuffer((config.sample.prompt or "\n").encode("utf-8"), np.uint8).astype(np.int32)
    prompt = jnp.asarray(prompt)[None]
    n = min(DECODE_TOKENS, net.max_len - prompt.shape[1])
    seconds = None
    for _ in range(2):
        t0 = time.perf_counter()
        out = generate(net, params, jax.random.PRNGKey(0), prompt, max_new_tokens=n, temperature=0.0)
        jax.block_until_ready(out)
        seconds = time.perf_counter() - t0
    return n / seconds


def evaluate(workdir: str, *, num_windows: int | None = None, compress_files: int = 0,
             group_size: int = quant.DEFAULT_GROUP_SIZE, embeddings: bool = False) -> dict:
    coder = compress.LMCoder(workdir)
    config, float_params, net = coder.config, coder.params, coder.net
    rows = []
    for width in WIDTHS:
        params = quantized_params(float_params, width, group_size=group_size, embeddings=embeddings)
        model = net if width == "float32" else quant.Dequantized(net)
        t0 = time.perf_counter()
        bpb, n_windows = heldout_bits_per_byte(model, params, config, num_windows)
        row = {"weights": width, "heldout_bits_per_byte": bpb, "windows": n_windows,
               "eval_seconds": time.perf_counter() - t0,
               "param_bytes": quant.quantized_bytes(params),
               "decode_tokens_per_second": decode_tokens_per_second(model, params, config)}
        if compress_files:
            coder.net, coder.params = model, params
            coder.params_id = compress.params_fingerprint(params)[:compress.ID_BYTES]
            r = compress.heldout(workdir, batch_size=1, limit=compress_files, coder=coder)
            row.update({"compress_files": r["num_files"], "compress_bytes": r["bytes"],
                        "coded_bits_per_byte": r["coded_bits_per_byte"],
                        "model_bits_per_byte_coded_files": r["model_bits_per_byte"],
                        "round_trip_exact": r["round_trip_exact"],
                        "compress_seconds": r["compress_seconds"]})
        rows.append(row)
    return {"workdir": workdir, "checkpoint_step": coder.step, "group_size": group_size,
            "embeddings_quantized": embeddings, "results": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.quantize_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_windows", type=int, default=0, help="0 = every held-out window")
    parser.add_argument("--compress_files", type=int, default=0)
    parser.add_argument("--group_size", type=int, default=quant.DEFAULT_GROUP_SIZE)
    parser.add_argument("--embeddings", action="store_true", help="also quantize the embeddings")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.workdir, num_windows=args.num_windows or None, compress_files=args.compress_files,
                          group_size=args.group_size, embeddings=args.embeddings)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
