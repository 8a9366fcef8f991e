"""What the compressor's container costs: header bytes, the parameter hash, the checks.

    python -m benchmarks.compress_container [--workdir=RUN] [--repeats 3] [--quick]

Against the time to compress the median-size held-out file (the baseline, in the
same run), it times `params_fingerprint` (the SHA-256 of the EMA parameters that
every file's header carries, computed once per `LMCoder`) and `parse` (the checks
run before decoding: header and payload CRC-32s, the length bound), each warmed
up, median of repeats. It prints the ratios, the header sizes of format versions 1
and 2 and what the 32 extra bytes per file add in bits per byte over the held-out
split, then all of it as JSON.

With --workdir, the trained LM run there, with the run's saved config
(`experiments.run_config.load_run`). Without it the model is configs/lm_stdlib.py
at its initial parameters, saved to a temporary workdir: the same size and the
same coding work per byte as the trained model (the time of a step does not
depend on the weights' values), which the output says. --quick: the first 1 KiB
of that file, 2 repeats.
"""
import argparse
import json
import os
import tempfile

import jax
import numpy as np

from benchmarks.common import device_description, no_run_note, time_fn, trained_config
from configs import lm_stdlib
from experiments import compress, text_source
from experiments.checkpoint import Checkpointer


def measure(workdir: str, repeats: int, max_bytes: int | None = None) -> dict:
    coder = compress.LMCoder(workdir, trained_config(workdir, "lm"))
    files = compress.heldout_files(coder.config)
    name, data = sorted(files, key=lambda f: len(f[1]))[len(files) // 2]
    data = data[:max_bytes]
    t_compress = time_fn(lambda: compress.compress_many(coder, [data]), repeats=repeats)  # warm-up compiles
    (blob,), _ = compress.compress_many(coder, [data])
    t_hash = time_fn(lambda: compress.params_fingerprint(coder.params), repeats=20)
    t_parse = time_fn(lambda: compress.parse(blob), repeats=20)
    total = sum(len(d) for _, d in files)
    extra = compress.HEADER_BYTES - compress.HEADER_BYTES_V1
    return {
        "device": device_description(),
        "parameters": sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(coder.params)),
        "median_heldout_file": name, "median_heldout_file_bytes": len(data),
        "compress_seconds": t_compress,
        "params_fingerprint_seconds": t_hash,
        "params_fingerprint_over_compress": t_hash / t_compress,
        "parse_checks_seconds": t_parse,
        "parse_checks_over_compress": t_parse / t_compress,
        "header_bytes_version_1": compress.HEADER_BYTES_V1,
        "header_bytes_version_2": compress.HEADER_BYTES,
        "heldout_files": len(files), "heldout_bytes": total,
        "version_2_extra_bits_per_byte_on_heldout": 8 * extra * len(files) / total,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a trained LM run (default: initial lm_stdlib)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    max_bytes = None
    if args.quick:
        args.repeats, max_bytes = 2, 1024
    if args.workdir:
        result = measure(args.workdir, args.repeats, max_bytes)
    else:
        print(no_run_note("--workdir", "an untrained configs/lm_stdlib.py model"))
        with tempfile.TemporaryDirectory() as workdir:
            config = lm_stdlib.get_config()
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json())
            ckpt = Checkpointer(workdir)
            ckpt.save(0, text_source.state_template(config))
            ckpt.close()
            result = measure(workdir, args.repeats, max_bytes)
    print(f"{result['parameters']:,} parameters; {result['median_heldout_file']} "
          f"({result['median_heldout_file_bytes']:,} bytes compressed), median of {args.repeats} after warm-up")
    print(f"compress {result['compress_seconds']:.3f} s; params_fingerprint "
          f"{1e3 * result['params_fingerprint_seconds']:.2f} ms, ratio to compress "
          f"{result['params_fingerprint_over_compress']:.2e}; parse checks "
          f"{1e6 * result['parse_checks_seconds']:.1f} us, ratio to compress {result['parse_checks_over_compress']:.2e}")
    print(f"header {result['header_bytes_version_1']} -> {result['header_bytes_version_2']} bytes: "
          f"+{result['version_2_extra_bits_per_byte_on_heldout']:.4f} bits/byte over the "
          f"{result['heldout_files']} held-out files")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
