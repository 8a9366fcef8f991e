"""The LM compressor end to end through its command-line functions, with a tiny
randomly initialized model: byte-exact round trips, sizes against the model's
cross-entropy, the held-out report, and for each kind of bad or damaged file its
own error, raised before any decoding (the decoder is replaced by one that fails)."""
import json
import os
import re
import struct
import zlib

import jax
import numpy as np
import pytest

from experiments import compress, text_source
from experiments.checkpoint import Checkpointer
from genjax.autoregressive import coding
from lm_testing import fake_stdlib, tiny_config

HEADER_BITS = 8 * compress.HEADER_BYTES
FLUSH_BITS = 32
TRUNCATION_BITS = float(np.log2(1 + 2.0 ** -8))  # per symbol, see tests/test_coding.py


def _make_run(wd, config, step=0):
    os.makedirs(wd, exist_ok=True)
    with open(os.path.join(wd, "config.json"), "w") as f:
        f.write(config.to_json())
    ckpt = Checkpointer(str(wd))
    ckpt.save(step, text_source.state_template(config))
    ckpt.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdlib")
    files = fake_stdlib(root)
    wd = str(tmp_path_factory.mktemp("run"))
    _make_run(wd, tiny_config(str(root)))
    return wd, files


INPUTS = {
    "empty": b"",
    "one": b"x",
    "all_bytes": bytes(range(256))[::-1],
    "text": b"def f(x):\n    return x + 1\n" * 4,  # longer than the 16-byte window
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_cli_round_trip_is_byte_exact(run, tmp_path, capsys, name):
    wd, _ = run
    src, packed, back = tmp_path / "in", tmp_path / "in.gjlm", tmp_path / "out"
    src.write_bytes(INPUTS[name])
    assert compress.main(["compress", f"--workdir={wd}", str(src), str(packed)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert compress.main(["decompress", f"--workdir={wd}", str(packed), str(back)]) == 0
    assert back.read_bytes() == INPUTS[name]
    # The file costs the model's cross-entropy (under the coder's window) up to
    # quantization (<= 1 %), range truncation, 4 flush bytes and the header.
    n = len(INPUTS[name])
    model_bits = report["model_bits_per_byte"] * max(n, 1)
    size_bits = 8 * packed.stat().st_size
    assert size_bits <= 1.01 * model_bits + TRUNCATION_BITS * n + FLUSH_BITS + HEADER_BITS
    assert report["bytes_out"] == packed.stat().st_size


def test_heldout_report_round_trips_and_compares(run):
    wd, files = run
    result = compress.heldout(wd, batch_size=3)
    val = {r: d for r, d in files.items() if r.endswith(".py") and compress.text.is_validation(r)}
    assert result["round_trip_exact"] and result["num_files"] == len(val)
    assert result["bytes"] == sum(len(d) for d in val.values())
    n = result["bytes"]
    const = len(val) * (FLUSH_BITS + HEADER_BITS) / n
    assert result["coded_bits_per_byte"] <= 1.01 * result["model_bits_per_byte"] + TRUNCATION_BITS + const
    assert result["payload_bits_per_byte"] < result["coded_bits_per_byte"]
    for tool in ("gzip-9", "bz2-9", "xz-9e"):
        assert 0 < result[f"{tool}_concatenated"] and 0 < result[f"{tool}_per_file"]
    # A random model is near uniform: about 8 bits per byte (it is not trained).
    assert 7.0 < result["model_bits_per_byte"] < 9.0


def test_workdir_errors_exit_2_without_traceback(run, tmp_path, capsys):
    src = tmp_path / "src"
    src.write_bytes(b"import os\n")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert compress.main(["compress", f"--workdir={empty}", str(src), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
    assert compress.main(["compress", f"--workdir={run[0]}", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_len - keep"):
        coding.check_window(compress.LMCoder(run[0]).net, 5)


# ----------------------------------------------------------------------------- the container

ORIGINAL = b"import os\nimport sys\n" * 3
LENGTH_AT = 31  # offset of the length field (module docstring of experiments.compress)


@pytest.fixture(scope="module")
def coder(run):
    return compress.LMCoder(run[0])


@pytest.fixture(scope="module")
def packed(coder):
    (blob,), _ = compress.compress_many(coder, [ORIGINAL])
    return blob


@pytest.fixture
def no_decoding(monkeypatch):
    """Any decoding fails the test (encoding still runs): the checks must stop the
    file before the decoder allocates or reads anything."""
    encode_or_decode = coding.code_batch

    def encode_only(*args, streams=None, **kwargs):
        if streams is not None:
            raise AssertionError("the decoder ran; a check should have stopped this file before it")
        return encode_or_decode(*args, **kwargs)

    monkeypatch.setattr(coding, "code_batch", encode_only)


def _field(blob, offset, fmt, value, *, fix_header_crc=False):
    """`blob` with the header field at `offset` set to `value`; optionally with the
    header CRC recomputed, as a writer other than this compressor might."""
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    if fix_header_crc:
        struct.pack_into(">I", out, compress.HEADER_BYTES - 4, zlib.crc32(bytes(out[:compress.HEADER_BYTES - 4])))
    return bytes(out)


def _flip(blob, index, mask=0xFF):
    out = bytearray(blob)
    out[index] ^= mask
    return bytes(out)


# name: (damage to a good file, the error, what its message must say)
DAMAGE = {
    "empty": (lambda b: b"", compress.NotCompressedFileError, r"is empty \(0 bytes\)"),
    "not_genjax": (lambda b: b"PK\x03\x04 a zip file", compress.NotCompressedFileError,
                   r"not a genjax LM-compressed file: it starts with b'PK\\x03\\x04', expected b'GJLM'"),
    "newer_version": (lambda b: _field(b, 4, ">B", 3), compress.UnsupportedVersionError,
                      "format version 3; this code reads versions 1 and 2"),
    "header_cut": (lambda b: b[:20], compress.TruncatedFileError, "20 bytes, fewer than the 63-byte header"),
    "magic_only": (lambda b: b[:4], compress.TruncatedFileError, "4 bytes, it ends before the format version"),
    "payload_cut": (lambda b: b[:-3], compress.TruncatedFileError, r"3 bytes missing"),
    "length_top_byte_flipped": (lambda b: _flip(b, LENGTH_AT), compress.CorruptedFileError,
                                "header fails its CRC-32"),
    "length_plus_2_24": (lambda b: _field(b, LENGTH_AT, ">Q", len(ORIGINAL) + 2 ** 24), compress.CorruptedFileError,
                         "header fails its CRC-32"),
    "length_plus_2_24_valid_crc": (
        lambda b: _field(b, LENGTH_AT, ">Q", len(ORIGINAL) + 2 ** 24, fix_header_crc=True),
        compress.CorruptedFileError, f"length field says {len(ORIGINAL) + 2 ** 24} bytes, but a"),
    "payload_byte_flipped": (lambda b: _flip(b, compress.HEADER_BYTES + 1, 0x55), compress.CorruptedFileError,
                             "payload fails its CRC-32"),
    "bytes_appended": (lambda b: b + b"\n", compress.CorruptedFileError, "1 bytes after the"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_each_damage_has_its_own_error_before_decoding(coder, packed, no_decoding, tmp_path, capsys, name):
    damage, error, message = DAMAGE[name]
    blob = damage(packed)
    with pytest.raises(error, match=message) as caught:
        compress.decompress_many(coder, [blob], ["f.gjlm"])
    # Exactly this error, not a subclass or sibling: the cause is named, not guessed.
    assert type(caught.value) is error
    # These checks need no model: the CLI runs them before it reads the workdir,
    # exits 2 with one line, and writes nothing.
    bad, out = tmp_path / "f.gjlm", tmp_path / "out"
    bad.write_bytes(blob)
    missing_workdir = tmp_path / "no_such_run"
    assert compress.main(["decompress", f"--workdir={missing_workdir}", str(bad), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()


def test_messages_are_distinct(coder, packed, no_decoding):
    """Two kinds of damage share a message only when they are one cause (a damaged
    header, whichever field was hit); numbers aside, every other message differs."""
    shapes = {}
    for name, (damage, error, _) in DAMAGE.items():
        with pytest.raises(error) as caught:
            compress.decompress_many(coder, [damage(packed)], ["f.gjlm"])
        shapes[name] = re.sub(r"0x[0-9a-f]+|\d+", "N", str(caught.value))
    for a in DAMAGE:
        for b in DAMAGE:
            assert (shapes[a] == shapes[b]) == (DAMAGE[a][2] == DAMAGE[b][2]), (a, b, shapes[a])


def test_file_of_another_model_is_refused_naming_both(run, coder, packed, no_decoding, tmp_path, capsys):
    other = tmp_path / "other_run"
    config = coder.config.copy_and_resolve_references()
    config.seed = coder.config.seed + 1  # other initial parameters
    _make_run(str(other), config, step=7)
    other_coder = compress.LMCoder(str(other))
    assert other_coder.params_id != coder.params_id and other_coder.settings_id == coder.settings_id
    with pytest.raises(compress.WrongModelError) as caught:
        compress.decompress_many(other_coder, [packed], ["f.gjlm"])
    msg = str(caught.value)
    for part in (coder.params_id.hex(), "step 0", other_coder.params_id.hex(), "step 7", str(other)):
        assert part in msg, (part, msg)
    f = tmp_path / "f.gjlm"
    f.write_bytes(packed)
    assert compress.main(["decompress", f"--workdir={other}", str(f), str(tmp_path / "o")]) == 2
    assert "made by another model" in capsys.readouterr().err

    # Same parameters, another window rule: the settings hash names the difference.
    same = tmp_path / "same_params_other_keep"
    config = coder.config.copy_and_resolve_references()
    config.compress.keep = 12
    _make_run(str(same), config)
    same_coder = compress.LMCoder(str(same))
    assert same_coder.params_id == coder.params_id
    with pytest.raises(compress.WrongModelError, match=r'coded with other settings.*"keep": 12'):
        compress.decompress_many(same_coder, [packed], ["f.gjlm"])


def test_batch_of_another_size_is_refused(coder, no_decoding):
    files, _ = compress.compress_many(coder, [ORIGINAL, b"x = 1\n"])
    with pytest.raises(compress.BatchMismatchError, match="coded in a batch of 2 files; decoding 1"):
        compress.decompress_many(coder, files[:1], ["first.gjlm"])


def test_probabilities_that_differ_are_named_only_after_every_check_passes(run, coder, packed):
    # A model with the same identity whose float outputs differ, as on another
    # machine: the container and identity checks pass, decoding derails, and
    # only then is the cause the probabilities.
    drifted = compress.LMCoder(run[0])
    drifted.params = jax.tree_util.tree_map(lambda x: x * 1.5, drifted.params)
    with pytest.raises(compress.DecodedMismatchError, match="model's probabilities differ") as caught:
        compress.decompress_many(drifted, [packed], ["f.gjlm"])
    assert "SHA-256" in str(caught.value)
    assert compress.decompress_many(coder, [packed]) == [ORIGINAL]
    assert compress.decompress_many(coder, []) == []


def _as_version_1(blob, *, step=0, keep=8, chunk=16):
    """The same payload in a version-1 container, as older genjax wrote it (keep
    and chunk: those of the tiny config that coded it)."""
    payload = blob[compress.HEADER_BYTES:]
    return struct.pack(">4sBQIQHI", b"GJLM", 1, len(ORIGINAL), zlib.crc32(ORIGINAL), step, keep,
                       chunk) + payload


def test_version_1_files_still_decode_with_their_checks(run, coder, packed, monkeypatch, tmp_path):
    assert compress.decompress_many(coder, [_as_version_1(packed)]) == [ORIGINAL]
    f, out = tmp_path / "v1.gjlm", tmp_path / "v1.out"
    f.write_bytes(_as_version_1(packed))
    assert compress.main(["decompress", f"--workdir={run[0]}", str(f), str(out)]) == 0
    assert out.read_bytes() == ORIGINAL
    with pytest.raises(compress.DecodedMismatchError, match="version 1 has no container checksum"):
        compress.decompress_many(coder, [_flip(_as_version_1(packed), compress.HEADER_BYTES_V1 + 2, 0x55)])
    monkeypatch.setattr(coding, "code_batch", lambda *a, **k: pytest.fail("the decoder ran"))
    with pytest.raises(compress.WrongModelError, match="checkpoint of step 7; .* holds step 0"):
        compress.decompress_many(coder, [_as_version_1(packed, step=7)])
    # The length bound needs no checksum: a flipped top byte is refused before allocating.
    with pytest.raises(compress.CorruptedFileError, match=f"length field says {(0x42 << 56) + len(ORIGINAL)} bytes"):
        compress.decompress_many(coder, [_flip(_as_version_1(packed), 5, 0x42)])
