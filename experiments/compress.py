"""The language model as a compressor: arithmetic coding with a trained LM.

    python -m experiments.compress compress   --workdir=RUN IN OUT
    python -m experiments.compress decompress --workdir=RUN IN OUT
    python -m experiments.compress heldout    --workdir=RUN [--json=OUT.json]

RUN is the workdir of an `experiments.main` run of the "lm" family (for example
configs/lm_stdlib.py); the newest checkpoint's EMA parameters drive the coder
(genjax.autoregressive.coding). A file is coded byte by byte from a newline
start token, with the model's sliding window (config.compress.keep); the round
trip is byte-exact.

`heldout` codes every held-out file of the stdlib split (or the validation
split of a TFDS dataset, as one file), checks each round trip, and reports bits
per byte of the model's cross-entropy under the coder's conditioning, of the
coded files, and of gzip -9, bz2 -9 and xz -9e on the same bytes.

File format, version 2 (a 63-byte header, big-endian integers, then the payload):

    offset size field
     0      4  magic         b"GJLM"
     4      1  version       2
     5      8  params_id     SHA-256 of the EMA parameters (`params_fingerprint`), first 8 bytes
    13      8  settings_id   SHA-256 of the coding settings (`coding_settings`), first 8 bytes
    21      8  step          checkpoint step of the parameters (named in messages)
    29      2  lanes         number of files coded side by side in one batch
    31      8  length        bytes of the original
    39      8  data_hash     SHA-256 of the original bytes, first 8 bytes
    47      8  payload_len   bytes of range-coder output that follow the header
    55      4  payload_crc   CRC-32 of the payload
    59      4  header_crc    CRC-32 of header bytes 0..58
    63         payload       the range coder's bytes

Decompressing checks, in this order, and stops at the first failure with its own
exception (all `CompressedFileError`, a ValueError; the CLI prints one line and
exits with status 2):

1. `NotCompressedFileError`: empty, or the magic is not b"GJLM".
2. `UnsupportedVersionError`: a version other than 1 or 2.
3. `TruncatedFileError`: the file ends inside the header.
4. `CorruptedFileError`: the header's CRC-32 fails. The lengths and identity it
   holds are not trusted, so a damaged length field ends here, before anything
   is allocated (CRC-32 detects every error of 1 or 2 bits in a message this
   short and every burst of up to 32 bits, Koopman 2002; other damage passes
   with probability 2^-32).
5. `TruncatedFileError`: the payload is shorter than payload_len;
   `CorruptedFileError`: it is longer (bytes appended), or its CRC-32 fails.
6. `CorruptedFileError`: length exceeds `coding.max_symbols(payload_len)`, the
   most bytes that many payload bytes can code (about 1,422 per byte). With both
   CRCs intact only a file written by something else gets here; the bound keeps
   such a file from allocating or decoding more than that. It is no defence
   against a crafted file: anyone can write valid CRCs, and 1,422 bytes per
   payload byte is far more than any real file needs.
7. `WrongModelError`: params_id or settings_id differs from the workdir's (the
   message names both, the steps and the workdir).
8. `BatchMismatchError`: the file was coded in a batch of another size (XLA may
   round a batched matmul differently, so the probabilities could differ).
9. Decoding; then `DecodedMismatchError` if the decoded bytes' hash differs from
   data_hash. With every check above passed, the cause is that the model's
   float probabilities differ from those at compression: another machine, JAX or
   XLA version, or kernel choice.

Identities are truncated to 64 bits: two different models share one with
probability 2^-64, and they guard against mistakes, not forgery. The original's
check is 64 bits of SHA-256 rather than a CRC-32 because it is the last line
against returning wrong bytes silently: a derailed decoder emits bytes that a
32-bit check would pass once in 4.3e9 files, a 64-bit one once in 1.8e19, for
four more bytes.

Version 1 files (b"GJLM" | 1 | length u64 | CRC-32 of the original u32 | step u64 |
keep u16 | chunk u32 | payload; a 31-byte header) still decode, with that
version's checks only: the checkpoint step must match, the length is bounded
by the payload size as above, and the CRC-32 is checked after decoding, so a
damaged version-1 file is reported only as decoded bytes that differ.
"""
import argparse
import bz2
import dataclasses
import gzip
import hashlib
import json
import lzma
import pathlib
import struct
import sys
import sysconfig
import time
import zlib

import jax
import numpy as np

from experiments import text_corpus, text_source
from genjax.autoregressive import coding
from genjax.data import text

MAGIC = b"GJLM"
VERSION = 2
ID_BYTES = 8  # params_id, settings_id and data_hash: SHA-256 truncated to 64 bits
_HEADER_V1 = struct.Struct(">4sBQIQHI")
_HEADER_V2_BODY = struct.Struct(f">4sB{ID_BYTES}s{ID_BYTES}sQHQ{ID_BYTES}sQI")  # all but header_crc
_CRC = struct.Struct(">I")
HEADER_BYTES = _HEADER_V2_BODY.size + _CRC.size
HEADER_BYTES_V1 = _HEADER_V1.size
MAX_LANES = (1 << 16) - 1
# Transformer attributes that fix its function given the parameters; the kernel
# choices (attention, layer_norm, gelu) compute the same function and may differ
# between machines, and dropout is off when coding.
_ARCHITECTURE = ("vocab_size", "num_layers", "d_model", "num_heads", "d_ff", "max_len",
                 "positions", "tie_embeddings", "dtype", "gelu_approximate", "rope_base")


class CompressedFileError(ValueError):
    """A compressed file that cannot be decompressed; the message says why."""


class NotCompressedFileError(CompressedFileError):
    """Empty, or not starting with the magic bytes."""


class UnsupportedVersionError(CompressedFileError):
    """A format version this code does not read."""


class TruncatedFileError(CompressedFileError):
    """The file ends before its header, or before the payload its header announces."""


class CorruptedFileError(CompressedFileError):
    """A checksum of the container fails, or its fields contradict each other."""


class WrongModelError(CompressedFileError):
    """Made with other parameters or coding settings than the workdir's."""


class BatchMismatchError(CompressedFileError):
    """Coded in a batch of another size than it is being decoded in."""


class DecodedMismatchError(CompressedFileError):
    """Every container check passed, but the decoded bytes are not the original's."""


def params_fingerprint(params) -> bytes:
    """SHA-256 over the parameter leaves in the pytree's flattening order (sorted
    dict keys), each as its path, dtype and shape, then its little-endian bytes:
    equal exactly when every parameter is bit-identical."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.asarray(jax.device_get(leaf))
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        digest.update(f"{jax.tree_util.keystr(path)}|{a.dtype.name}|{a.shape}\n".encode())
        digest.update(a.tobytes())
    return digest.digest()


def coding_settings(net, *, keep: int, chunk: int) -> dict:
    """Everything besides the parameters that the coded bytes depend on: the
    architecture, the window rule, the start token and the coder's precision."""
    arch = {k: getattr(net, k) for k in _ARCHITECTURE}
    arch["dtype"] = np.dtype(arch["dtype"]).name
    return {"architecture": arch, "keep": int(keep), "chunk": int(chunk),
            "start_token": text.START_TOKEN, "total_bits": coding.TOTAL_BITS}


def settings_fingerprint(settings: dict) -> bytes:
    """SHA-256 of the settings' canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).digest()


def data_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:ID_BYTES]


class LMCoder:
    """A trained LM (net + EMA params of a workdir's newest checkpoint), its coding
    rule, and the identity (params_id, settings_id) its files carry."""

    def __init__(self, workdir: str, config=None):
        """`config`: the run's config (default: its config.json)."""
        self.workdir = workdir
        self.config, self.params, self.step = text_source.restore_params(workdir, config)
        self.net = text_source.build_net(self.config)
        cc = self.config.get("compress", {})
        self.keep = int(cc.get("keep", 0) or self.net.max_len // 2)
        self.chunk = int(cc.get("chunk", 0) or 1024)
        coding.check_window(self.net, self.keep)
        self.settings = coding_settings(self.net, keep=self.keep, chunk=self.chunk)
        self.params_id = params_fingerprint(self.params)[:ID_BYTES]
        self.settings_id = settings_fingerprint(self.settings)[:ID_BYTES]

    def code(self, sequences, *, keep=None, chunk=None, streams=None):
        return coding.code_batch(self.net, self.params, sequences, keep=keep or self.keep,
                                 start_token=text.START_TOKEN, chunk=chunk or self.chunk,
                                 streams=streams)


@dataclasses.dataclass(frozen=True)
class Container:
    """The fields of a compressed file that passed the checks that need no model.

    Version 2 fills params_id, settings_id, lanes and data_hash; version 1 fills
    crc32, keep and chunk instead."""

    version: int
    length: int
    step: int
    payload: bytes
    params_id: bytes | None = None
    settings_id: bytes | None = None
    lanes: int | None = None
    data_hash: bytes | None = None
    crc32: int | None = None
    keep: int | None = None
    chunk: int | None = None


def pack(data: bytes, payload: bytes, *, params_id: bytes, settings_id: bytes, step: int,
         lanes: int) -> bytes:
    """A version-2 file: header (module docstring) + payload."""
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes={lanes}; expected 1 <= lanes <= {MAX_LANES}")
    body = _HEADER_V2_BODY.pack(MAGIC, VERSION, params_id, settings_id, step, lanes, len(data),
                                data_hash(data), len(payload), zlib.crc32(payload))
    return body + _CRC.pack(zlib.crc32(body)) + payload


def compress_many(coder: LMCoder, blobs) -> tuple[list, list]:
    """Compresses byte strings side by side (one batch); returns (files, bits per byte
    arrays of the model's cross-entropy). Decompress them with `decompress_many` on
    the same batch (lanes may round differently in another batch size)."""
    seqs = [np.frombuffer(b, np.uint8) for b in blobs]
    payloads, bits = coder.code(seqs)
    files = [pack(b, p, params_id=coder.params_id, settings_id=coder.settings_id, step=coder.step,
                  lanes=len(blobs))
             for b, p in zip(blobs, payloads)]
    return files, bits


def _check_length(name: str, length: int, payload_len: int) -> None:
    limit = coding.max_symbols(payload_len, text.VOCAB_SIZE)
    if length > limit:
        raise CorruptedFileError(
            f"{name}: its length field says {length} bytes, but a {payload_len}-byte payload codes at "
            f"most {limit} (every byte costs the coder >= "
            f"{np.log2(coding.TOTAL / (coding.TOTAL - text.VOCAB_SIZE + 1)):.4f} bits); "
            "the file was not written by this compressor")


def parse(blob: bytes, name: str = "the file") -> Container:
    """Checks 1-6 of the module docstring (none needs the model) and returns the
    fields; raises the `CompressedFileError` of the first check that fails."""
    n = len(blob)
    if n == 0:
        raise NotCompressedFileError(f"{name} is empty (0 bytes); expected a genjax LM-compressed "
                                     f"file starting with {MAGIC!r}")
    if blob[:len(MAGIC)] != MAGIC[:n]:
        raise NotCompressedFileError(f"{name} is not a genjax LM-compressed file: it starts with "
                                     f"{bytes(blob[:len(MAGIC)])!r}, expected {MAGIC!r}")
    if n <= len(MAGIC):
        raise TruncatedFileError(f"{name} is truncated: {n} bytes, it ends before the format version")
    version = blob[len(MAGIC)]
    if version not in (1, VERSION):
        raise UnsupportedVersionError(f"{name} is format version {version}; this code reads versions "
                                      f"1 and {VERSION} (was it written by a newer genjax?)")
    size = HEADER_BYTES_V1 if version == 1 else HEADER_BYTES
    if n < size:
        raise TruncatedFileError(f"{name} is truncated: {n} bytes, fewer than the {size}-byte "
                                 f"header of format version {version}")
    if version == 1:
        _, _, length, crc, step, keep, chunk = _HEADER_V1.unpack_from(blob)
        _check_length(name, length, n - size)
        return Container(version=1, length=length, step=step, payload=bytes(blob[size:]),
                         crc32=crc, keep=keep, chunk=chunk)
    body = bytes(blob[:_HEADER_V2_BODY.size])
    (stored_header_crc,) = _CRC.unpack_from(blob, _HEADER_V2_BODY.size)
    if zlib.crc32(body) != stored_header_crc:
        raise CorruptedFileError(
            f"{name} is corrupted: its header fails its CRC-32 (stored {stored_header_crc:#010x}, "
            f"computed {zlib.crc32(body):#010x}), so its lengths and model identity cannot be trusted")
    (_, _, params_id, settings_id, step, lanes, length, dhash, payload_len,
     payload_crc) = _HEADER_V2_BODY.unpack(body)
    payload = bytes(blob[size:])
    if len(payload) < payload_len:
        raise TruncatedFileError(
            f"{name} is truncated: its header announces a {payload_len}-byte payload, the file holds "
            f"{len(payload)} ({payload_len - len(payload)} bytes missing; expected {size + payload_len} "
            f"bytes in all, found {n})")
    if len(payload) > payload_len:
        raise CorruptedFileError(
            f"{name} has {len(payload) - payload_len} bytes after the {payload_len}-byte payload its "
            f"header announces (expected {size + payload_len} bytes in all, found {n}): appended data?")
    if zlib.crc32(payload) != payload_crc:
        raise CorruptedFileError(
            f"{name} is corrupted: its {payload_len}-byte payload fails its CRC-32 (stored "
            f"{payload_crc:#010x}, computed {zlib.crc32(payload):#010x})")
    _check_length(name, length, payload_len)
    return Container(version=VERSION, length=length, step=step, payload=payload,
                     params_id=params_id, settings_id=settings_id, lanes=lanes, data_hash=dhash)


def check_model(coder: LMCoder, head: Container, name: str = "the file") -> None:
    """Check 7: the file was made with this workdir's parameters and settings."""
    if head.version == 1:  # version 1 names only the checkpoint step
        if head.step != coder.step:
            raise WrongModelError(f"{name} was compressed with the checkpoint of step {head.step}; "
                                  f"{coder.workdir!r} holds step {coder.step}")
        return
    if head.params_id != coder.params_id:
        raise WrongModelError(
            f"{name} was made by another model: its parameters hash to {head.params_id.hex()} "
            f"(checkpoint step {head.step}); the workdir {coder.workdir!r} holds parameters hashing to "
            f"{coder.params_id.hex()} (step {coder.step}). Decompress it with the workdir that "
            "compressed it")
    if head.settings_id != coder.settings_id:
        raise WrongModelError(
            f"{name} was coded with other settings (hash {head.settings_id.hex()}) than the workdir "
            f"{coder.workdir!r} uses (hash {coder.settings_id.hex()}: "
            f"{json.dumps(coder.settings, sort_keys=True)}), with the same parameters (step "
            f"{coder.step}); was compress.keep, compress.chunk or the model config changed?")


def _decode(coder: LMCoder, heads: list, names: list) -> list:
    """Checks 7-9 of the module docstring for files that passed `parse`."""
    if not heads:
        return []
    for h, name in zip(heads, names):
        check_model(coder, h, name)
        if h.version != 1 and h.lanes != len(heads):
            raise BatchMismatchError(
                f"{name} was coded in a batch of {h.lanes} files; decoding {len(heads)} side by side "
                "runs another compiled program, whose float rounding may differ. Decompress it "
                f"together with the other files of its batch ({h.lanes} in all)")
    rules = {(h.keep or coder.keep, h.chunk or coder.chunk) for h in heads}
    if len(rules) > 1:
        raise ValueError(f"files use different windows/chunks {sorted(rules)}; decompress them separately")
    keep, chunk = rules.pop()
    seqs, _ = coder.code([h.length for h in heads], keep=keep, chunk=chunk,
                         streams=[h.payload for h in heads])
    out = []
    for h, name, s in zip(heads, names, seqs):
        data = s.astype(np.uint8).tobytes()
        if h.version == 1:
            if zlib.crc32(data) != h.crc32:
                raise DecodedMismatchError(
                    f"{name}: the decoded bytes fail the CRC-32 check of the original: the file is "
                    "damaged (format version 1 has no container checksum), or the model's "
                    "probabilities differ from those at compression (another machine, JAX version or batch)")
        elif data_hash(data) != h.data_hash:
            raise DecodedMismatchError(
                f"{name}: the decoded bytes fail the SHA-256 check of the original "
                f"(stored {h.data_hash.hex()}, decoded {data_hash(data).hex()}). The container and the "
                "model identity checked out, so the model's probabilities differ from those at "
                "compression (another machine, JAX or XLA version, or CPU kernel choice)")
        out.append(data)
    return out


def decompress_many(coder: LMCoder, files, names=None) -> list:
    """Inverse of `compress_many` (same batch). Raises a `CompressedFileError` naming
    the first check that fails (module docstring); `names` label the files in messages."""
    names = list(names) if names is not None else [f"file {i}" for i in range(len(files))]
    heads = [parse(f, name) for f, name in zip(files, names)]
    return _decode(coder, heads, names)


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
    """Decompresses one file. The checks that need no model run before the workdir is
    read; nothing is written unless every check passes."""
    blob = pathlib.Path(in_path).read_bytes()
    head = parse(blob, in_path)
    coder = coder or LMCoder(workdir)
    t0 = time.perf_counter()
    (data,) = _decode(coder, [head], [in_path])
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
        back = decompress_many(coder, [coded[i] for i in idx], [files[i][0] for i in idx])
        for i, data in zip(idx, back):
            if data != files[i][1]:
                raise AssertionError(f"round trip of {files[i][0]} is not byte-exact")
    t_decompress = time.perf_counter() - t0
    n = sum(len(f[1]) for f in files)
    model_bits = float(sum(np.sum(b, dtype=np.float64) for b in bits))
    coded_bits = 8 * sum(len(c) for c in coded)
    payload_bits = 8 * sum(len(c) - HEADER_BYTES for c in coded)
    per_file = [{"file": name, "bytes": len(data), "model_bits": float(np.sum(b, dtype=np.float64)),
                 "coded_bits": 8 * len(c)}
                for (name, data), b, c in zip(files, bits, coded)]
    # The coder's overhead over the cross-entropy: relative part (quantization,
    # range truncation) and a constant per file (4 flush bytes + the header).
    worst = max((f["coded_bits"] - 8 * (HEADER_BYTES + 4)) / max(f["model_bits"], 1e-9) for f in per_file)
    result = {
        "workdir": workdir, "checkpoint_step": coder.step, "num_files": len(files), "bytes": n,
        "window": coder.net.max_len, "keep": coder.keep, "batch_size": B,
        "model_bits_per_byte": model_bits / n,
        "coded_bits_per_byte": coded_bits / n,
        "payload_bits_per_byte": payload_bits / n,
        "header_bytes_per_file": HEADER_BYTES,
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
    except (ValueError, OSError) as err:
        # Bad input (a damaged or foreign file, a missing or unreadable path, a
        # workdir of another family): one line, no traceback, status 2 as for
        # bad arguments.
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
