"""experiments.quantize_eval on a tiny randomly initialized LM run: every width
reports held-out bits/byte, parameter bytes, decode speed and exact round trips."""
import json
import os

from experiments import quantize_eval, text_source
from experiments.checkpoint import Checkpointer
from lm_testing import fake_stdlib, tiny_config


def test_report_for_float32_int8_int4(tmp_path, capsys):
    root = tmp_path / "stdlib"
    root.mkdir()
    fake_stdlib(root)
    wd = str(tmp_path / "run")
    os.makedirs(wd)
    config = tiny_config(str(root))
    with open(os.path.join(wd, "config.json"), "w") as f:
        f.write(config.to_json())
    ckpt = Checkpointer(wd)
    ckpt.save(0, text_source.state_template(config))
    ckpt.close()
    out = tmp_path / "q.json"
    assert quantize_eval.main([f"--workdir={wd}", "--num_windows=4", "--compress_files=1",
                               "--group_size=16", f"--json={out}"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["weights"] for r in rows] == ["float32", "int8", "int4"]
    f32, i8, i4 = rows
    assert f32["param_bytes"] > 2 * i8["param_bytes"] and i8["param_bytes"] > i4["param_bytes"]
    for r in rows:
        assert r["round_trip_exact"] and r["windows"] == 4 and r["decode_tokens_per_second"] > 0
        # A random model is near uniform: about 8 bits per byte, quantized or not.
        assert abs(r["heldout_bits_per_byte"] - f32["heldout_bits_per_byte"]) < 0.05
    # A group size that does not divide d_model = 32 is refused with its value.
    assert quantize_eval.main([f"--workdir={wd}", "--group_size=24"]) == 2
    assert "group_size=24" in capsys.readouterr().err
