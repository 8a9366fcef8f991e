"""What the compressor's container costs: header bytes, the parameter hash, the checks.

    python -m benchmarks.compress_container [--workdir=RUN] [--repeats 3]

Against the time to compress the median-size held-out file (the baseline, in the
same run), it times `params_fingerprint` (the SHA-256 of the EMA parameters that
every file's header carries, computed once per `LMCoder`) and `parse` (the checks
run before decoding: header and payload CRC-32s, the length bound). It prints the
header sizes of format versions 1 and 2 and what the 32 extra bytes per file add
in bits per byte over the held-out split.

Without --workdir the model is configs/lm_stdlib.py at its initial parameters,
saved to a temporary workdir: the same size and the same coding work per byte as
the trained model (the time of a step does not depend on the weights' values).
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import device_description
from configs import lm_stdlib
from experiments import compress, text_source
from experiments.checkpoint import Checkpointer


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(workdir: str, repeats: int) -> dict:
    coder = compress.LMCoder(workdir)
    files = compress.heldout_files(coder.config)
    name, data = sorted(files, key=lambda f: len(f[1]))[len(files) // 2]
    compress.compress_many(coder, [data])  # compile
    t_compress = median_seconds(lambda: compress.compress_many(coder, [data]), repeats)
    (blob,), _ = compress.compress_many(coder, [data])
    t_hash = median_seconds(lambda: compress.params_fingerprint(coder.params), 20)
    t_parse = median_seconds(lambda: compress.parse(blob), 20)
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
        "header_bytes_version_1": compress.HEADER_BYTES_V1,
        "header_bytes_version_2": compress.HEADER_BYTES,
        "heldout_files": len(files), "heldout_bytes": total,
        "version_2_extra_bits_per_byte_on_heldout": 8 * extra * len(files) / total,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="a trained LM run (default: initial lm_stdlib)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.workdir:
        result = measure(args.workdir, args.repeats)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            config = lm_stdlib.get_config()
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json())
            ckpt = Checkpointer(workdir)
            ckpt.save(0, text_source.state_template(config))
            ckpt.close()
            result = measure(workdir, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
