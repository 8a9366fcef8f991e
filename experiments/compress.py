"""The language model as a compressor: arithmetic coding with a trained LM.

    python -m experiments.compress compress   --workdir=RUN IN OUT
    python -m experiments.compress decompress --workdir=RUN IN OUT
    python -m experiments.compress heldout    --workdir=RUN [--json=OUT.json]

RUN is the workdir of an `experiments.main` run of the "lm" family (for example
configs/lm_stdlib.py); the newest checkpoint's EMA parameters drive the coder
(genjax.autoregressive.coding). A file is coded byte by byte from a newline
start token, with the model's sliding window (config.compress.keep); the round
trip is byte-exact and checked by a CRC-32 stored in the header.

`heldout` codes every held-out file of the stdlib split (or the validation
split of a TFDS dataset, as one file), checks each round trip, and reports bits
per byte of the model's cross-entropy under the coder's conditioning, of the
coded files, and of gzip -9, bz2 -9 and xz -9e on the same bytes.

Format: b"GJLM" | version 1 | length u64 | crc32 u32 | checkpoint step u64 |
keep u16 | chunk u32 | range-coder bytes (big-endian integers).
"""
import argparse
import bz2
import gzip
import json
import lzma
import pathlib
import struct
import sys
import sysconfig
import time
import zlib

import numpy as np

from experiments import text_corpus, text_source
from genjax.autoregressive import coding
from genjax.data import text

MAGIC = b"GJLM"
VERSION = 1
_HEADER = struct.Struct(">4sBQIQHI")


class LMCoder:
    """A trained LM (net + EMA params of a workdir's newest checkpoint) and its coding rule."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.config, self.params, self.step = text_source.restore_params(workdir)
        self.net = text_source.build_net(self.config)
        cc = self.config.get("compress", {})
        self.keep = int(cc.get("keep", 0) or self.net.max_len // 2)
        self.chunk = int(cc.get("chunk", 0) or 1024)
        coding.check_window(self.net, self.keep)

    def code(self, sequences, *, keep=None, chunk=None, streams=None):
        return coding.code_batch(self.net, self.params, sequences, keep=keep or self.keep,
                                 start_token=text.START_TOKEN, chunk=chunk or self.chunk,
                                 streams=streams)


def _header(n: int, crc: int, step: int, keep: int, chunk: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, n, crc, step, keep, chunk)


def compress_many(coder: LMCoder, blobs) -> tuple[list, list]:
    """Compresses byte strings side by side (one batch); returns (files, bits per byte
    arrays of the model's cross-entropy). Decompress them with `decompress_many` on
    the same batch (lanes may round differently in another batch size)."""
    seqs = [np.frombuffer(b, np.uint8) for b in blobs]
    payloads, bits = coder.code(seqs)
    files = [_header(len(b), zlib.crc32(b), coder.step, coder.keep, coder.chunk) + p
             for b, p in zip(blobs, payloads)]
    return files, bits


def parse(blob: bytes) -> dict:
    """The header fields of a compressed file; ValueError for anything else."""
    if len(blob) < _HEADER.size or blob[:4] != MAGIC:
        raise ValueError(f"not a genjax LM-compressed file: starts with {blob[:4]!r}, expected {MAGIC!r}")
    magic, version, n, crc, step, keep, chunk = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise ValueError(f"compressed-file version {version}; this code reads version {VERSION}")
    return {"length": n, "crc32": crc, "step": step, "keep": keep, "chunk": chunk,
            "payload": blob[_HEADER.size:]}


def decompress_many(coder: LMCoder, files) -> list:
    """Inverse of `compress_many` (same batch). ValueError when a file was made with
    another checkpoint, or its CRC does not match (different probabilities)."""
    heads = [parse(f) for f in files]
    for h in heads:
        if h["step"] != coder.step:
            raise ValueError(f"file was compressed with the checkpoint of step {h['step']}; "
                             f"{coder.workdir!r} holds step {coder.step}")
    rules = {(h["keep"], h["chunk"]) for h in heads}
    if len(rules) > 1:
        raise ValueError(f"files use different windows/chunks {sorted(rules)}; decompress them separately")
    keep, chunk = rules.pop()
    seqs, _ = coder.code([h["length"] for h in heads], keep=keep, chunk=chunk,
                         streams=[h["payload"] for h in heads])
    out = []
    for h, s in zip(heads, seqs):
        data = s.astype(np.uint8).tobytes()
        if zlib.crc32(data) != h["crc32"]:
            raise ValueError("decoded bytes fail the CRC-32 check: the model's probabilities differ "
                             "from those at compression (another machine, JAX version or batch)")
        out.append(data)
    return out


def compress_file(workdir: str, in_path: str, out_path: str, coder: LMCoder | None = None) -> dict:
    """Compresses one file; returns sizes and bits per byte."""
    coder = coder or LMCoder(workdir)
    data = pathlib.Path(in_path).read_bytes()
    t0 = time.perf_counter()
    (blob,), (bits,) = compress_many(coder, [data])
    pathlib.Path(out_path).write_bytes(blob)
    n = max(len(data), 1)
    return {"bytes_in": len(data), "bytes_out": len(blob), "bits_per_byte": 8 * len(blob) / n,
            "model_bits_per_byte": float(np.sum(bits, dtype=np.float64)) / n,
            "seconds": time.perf_counter() - t0}


def decompress_file(workdir: str, in_path: str, out_path: str, coder: LMCoder | None = None) -> dict:
    coder = coder or LMCoder(workdir)
    blob = pathlib.Path(in_path).read_bytes()
    t0 = time.perf_counter()
    (data,) = decompress_many(coder, [blob])
    pathlib.Path(out_path).write_bytes(data)
    return {"bytes_in": len(blob), "bytes_out": len(data), "seconds": time.perf_counter() - t0}


def heldout_files(config) -> list:
    """[(name, bytes)] of the held-out split: each stdlib validation file, or the
    TFDS validation split as one file."""
    if config.data.name == "stdlib":
        root = pathlib.Path(config.data.get("data_dir") or sysconfig.get_paths()["stdlib"])
        rels = [r for r in text_corpus.list_stdlib_files(root) if text.is_validation(r)]
        return [(r, (root / r).read_bytes()) for r in rels]
    return [(config.data.name, text_source.load_text(config, "validation").tobytes())]


def baselines(blobs) -> dict:
    """Compressed bits per byte of gzip -9, bz2 -9 and xz -9e, per file (summed) and
    on the files concatenated in order."""
    n = sum(len(b) for b in blobs)
    tools = {
        "gzip-9": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
        "bz2-9": lambda b: bz2.compress(b, compresslevel=9),
        "xz-9e": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME),
    }
    out = {}
    for name, fn in tools.items():
        out[f"{name}_per_file"] = 8 * sum(len(fn(b)) for b in blobs) / n
        out[f"{name}_concatenated"] = 8 * len(fn(b"".join(blobs))) / n
    return out


def heldout(workdir: str, *, batch_size: int | None = None, limit: int | None = None,
            coder: LMCoder | None = None) -> dict:
    """Codes the held-out files (longest first, `batch_size` lanes at a time), checks
    every round trip, and compares bits per byte with the cross-entropy and with
    gzip / bz2 / xz. `limit`: only the first `limit` files in path order (tests)."""
    coder = coder or LMCoder(workdir)
    files = heldout_files(coder.config)[:limit]
    B = batch_size or int(coder.config.get("compress", {}).get("batch_size", 8))
    order = sorted(range(len(files)), key=lambda i: -len(files[i][1]))
    batches = [order[i:i + B] for i in range(0, len(order), B)]
    coded, bits = [None] * len(files), [None] * len(files)
    t0 = time.perf_counter()
    for idx in batches:
        out, b = compress_many(coder, [files[i][1] for i in idx])
        for i, o, bb in zip(idx, out, b):
            coded[i], bits[i] = o, bb
    t_compress = time.perf_counter() - t0
    t0 = time.perf_counter()
    for idx in batches:
        back = decompress_many(coder, [coded[i] for i in idx])
        for i, data in zip(idx, back):
            if data != files[i][1]:
                raise AssertionError(f"round trip of {files[i][0]} is not byte-exact")
    t_decompress = time.perf_counter() - t0
    n = sum(len(f[1]) for f in files)
    model_bits = float(sum(np.sum(b, dtype=np.float64) for b in bits))
    coded_bits = 8 * sum(len(c) for c in coded)
    payload_bits = 8 * sum(len(c) - _HEADER.size for c in coded)
    per_file = [{"file": name, "bytes": len(data), "model_bits": float(np.sum(b, dtype=np.float64)),
                 "coded_bits": 8 * len(c)}
                for (name, data), b, c in zip(files, bits, coded)]
    # The coder's overhead over the cross-entropy: relative part (quantization,
    # range truncation) and a constant per file (4 flush bytes + the header).
    worst = max((f["coded_bits"] - 8 * (_HEADER.size + 4)) / max(f["model_bits"], 1e-9) for f in per_file)
    result = {
        "workdir": workdir, "checkpoint_step": coder.step, "num_files": len(files), "bytes": n,
        "window": coder.net.max_len, "keep": coder.keep, "batch_size": B,
        "model_bits_per_byte": model_bits / n,
        "coded_bits_per_byte": coded_bits / n,
        "payload_bits_per_byte": payload_bits / n,
        "header_bytes_per_file": _HEADER.size,
        "max_file_ratio_without_constant": worst,
        "round_trip_exact": True,
        "compress_seconds": t_compress, "decompress_seconds": t_decompress,
        **baselines([f[1] for f in files]),
        "per_file": per_file,
    }
    result["coded_vs_xz_concatenated"] = result["coded_bits_per_byte"] / result["xz-9e_concatenated"]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.compress", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("compress", "decompress"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", required=True)
        p.add_argument("input")
        p.add_argument("output")
    p = sub.add_parser("heldout")
    p.add_argument("--workdir", required=True)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--json", default=None, help="write the full result here")
    args = parser.parse_args(argv)
    try:
        if args.command == "compress":
            result = compress_file(args.workdir, args.input, args.output)
        elif args.command == "decompress":
            result = decompress_file(args.workdir, args.input, args.output)
        else:
            result = heldout(args.workdir, batch_size=args.batch_size)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(result, f, indent=2)
            result = {k: v for k, v in result.items() if k != "per_file"}
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
