"""The LM compressor end to end through its command-line functions, with a tiny
randomly initialized model: byte-exact round trips, sizes against the model's
cross-entropy, the held-out report, and clear errors for bad input."""
import json
import os

import numpy as np
import pytest

from experiments import compress, text_source
from experiments.checkpoint import Checkpointer
from genjax.autoregressive import coding
from lm_testing import fake_stdlib, tiny_config

HEADER_BITS = 8 * compress._HEADER.size
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


def test_bad_inputs_give_clear_errors(run, tmp_path, capsys):
    wd, _ = run
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04 not ours")
    assert compress.main(["decompress", f"--workdir={wd}", str(junk), str(tmp_path / "o")]) == 1
    assert "not a genjax LM-compressed file" in capsys.readouterr().err

    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert compress.main(["compress", f"--workdir={empty}", str(junk), str(tmp_path / "o")]) == 1
    assert "config.json" in capsys.readouterr().err

    # A corrupted payload decodes to other bytes: the CRC names the failure.
    src, packed = tmp_path / "src", tmp_path / "packed"
    src.write_bytes(b"import os\nimport sys\n" * 3)
    coder = compress.LMCoder(wd)
    compress.compress_file(wd, str(src), str(packed), coder=coder)
    blob = bytearray(packed.read_bytes())
    blob[compress._HEADER.size + 1] ^= 0x55
    with pytest.raises(ValueError, match="CRC-32"):
        compress.decompress_many(coder, [bytes(blob)])

    # A file from another checkpoint is refused.
    other = tmp_path / "other_run"
    _make_run(str(other), coder.config, step=7)
    with pytest.raises(ValueError, match="step 0.*holds step 7"):
        compress.decompress_many(compress.LMCoder(str(other)), [packed.read_bytes()])

    with pytest.raises(ValueError, match="max_len - keep"):
        coding.check_window(coder.net, 5)
