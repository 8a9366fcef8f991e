"""The scaling study glue: a tiny sweep trains, records N, D, C and the validation
loss, resumes from its results file, and fits and plots through the whole path.

The fitter itself (recovery of known laws, the published Chinchilla exponents,
bootstrap coverage) is tested in tests/test_scaling.py; here the glue must hand
it the right runs.
"""
import json
import math
import os

import numpy as np
import pytest

from configs import scaling_stdlib
from experiments import scaling as study_lib
from genjax import scaling

LN_256 = math.log(256.0)  # nats/byte of the uniform byte model


def tiny_config():
    c = scaling_stdlib.get_config()
    c.unlock()
    c.model.sizes = ((1, 8, 2), (2, 16, 2))
    c.data.batch_size = 4
    c.data.seq_len = 8
    c.data.eval_windows = 20
    c.train.tokens = (32, 64)  # 1 and 2 steps of 4 x 8 tokens
    c.train.steps_per_call = 4
    c.optim.learning_rate = 1e-2
    c.fit.grid = "small"
    c.fit.bootstrap_samples = 8
    return c


def tiny_corpus():
    # Skewed, repetitive bytes: a few steps already beat the uniform model.
    code = b"def add(x, y):\n    return x + y\n\n"
    return {"train": np.frombuffer(code * 300, np.uint8),
            "validation": np.frombuffer(code.replace(b"add", b"sum") * 20, np.uint8)}


def non_embedding_params(num_layers, d):
    # Per block: 2 LayerNorms (4d), qkv (3d^2 + 3d), out (d^2 + d), fc (4d^2 + 4d),
    # proj (4d^2 + d); plus the final LayerNorm (2d). Kaplan et al. 2020 drop the
    # token, position and unembedding matrices.
    return num_layers * (12 * d * d + 13 * d) + 2 * d


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("scaling"))
    config = tiny_config()
    records, fits, table = study_lib.study(config, workdir, corpus=tiny_corpus(), log=lambda s: None)
    return config, workdir, records, fits, table


@pytest.mark.slow  # trains the tiny 2 x 2 sweep (~25 s)
def test_runs_record_n_d_c_and_loss(swept):
    config, workdir, records, fits, table = swept
    assert len(records) == 4
    B, T = config.data.batch_size, config.data.seq_len
    for r in records:
        s = r["spec"]
        N = non_embedding_params(s["num_layers"], s["d_model"])
        assert r["N"] == N
        assert r["N_total"] == N + (2 * 256 + T) * s["d_model"]  # embed, unembed, positions
        assert r["D"] == s["tokens"] == s["steps"] * B * T
        assert r["C"] == 6 * N * r["D"]
        assert r["C_attn"] == (6 * N + 6 * s["num_layers"] * T * s["d_model"]) * r["D"]
        assert r["val_bits_per_byte"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
        # Trained models beat the uniform byte model on the held-out text.
        assert r["val_loss"] < LN_256
    # Cheapest run first, and the file holds every run.
    assert [r["C"] for r in records] == sorted(r["C"] for r in records)
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert sorted(saved["sweep"]) == sorted(r["name"] for r in records)
    # 4 runs cannot fit 5 parameters: the Chinchilla fit is skipped, and says so.
    assert fits["chinchilla"] is None and "not fitted (4 runs" in table
    assert set(fits["kaplan"]) >= {"L(N)", "L(D)"}


@pytest.mark.slow  # trains the tiny 2 x 2 sweep (~25 s)
def test_sweep_resumes_and_retrains_only_missing_runs(swept, tmp_path, monkeypatch):
    config, workdir, records, _, _ = swept
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    dropped = records[2]["name"]
    saved["runs"] = [r for r in saved["runs"] if r["name"] != dropped]
    with open(tmp_path / "results.json", "w") as f:
        json.dump(saved, f)
    trained = []
    real_train_run = study_lib.train_run

    def counting_train_run(spec, *args, **kwargs):
        trained.append(spec["name"])
        return real_train_run(spec, *args, **kwargs)

    monkeypatch.setattr(study_lib, "train_run", counting_train_run)
    again = study_lib.sweep(config, str(tmp_path), corpus=tiny_corpus(), log=lambda s: None)
    assert trained == [dropped]
    # Same seed, same data order, same program: the retrained run is the same run.
    assert again[2]["val_loss"] == records[2]["val_loss"]
    # A changed setting is a different run: it is retrained, not reused.
    trained.clear()
    monkeypatch.setattr(study_lib, "train_run", lambda spec, *a, **k: trained.append(spec["name"]) or
                        dict(records[0], name=spec["name"], spec=spec))
    changed = tiny_config()
    changed.optim.learning_rate = 5e-3
    study_lib.sweep(changed, str(tmp_path), corpus=tiny_corpus(), log=lambda s: None)
    assert sorted(trained) == sorted(r["name"] for r in records)


@pytest.mark.slow  # the full fit path with the paper's grid and the bootstrap (~18 s)
def test_fit_path_end_to_end_on_runs_from_a_known_law(tmp_path):
    # Recorded runs whose losses follow a known law exactly, 2 sizes x 3
    # budgets, refitted with --fit-only. L(D) at the largest N is then exactly
    # (E + A / N_max^alpha) + B / D^beta, an offset power law in D; L(N) at the
    # largest D is a line in log-log through 2 runs.
    # Constants sized to these tiny N and D, so no term swamps the others.
    law = scaling.ChinchillaLaw(E=1.8, A=30.0, B=20.0, alpha=0.35, beta=0.3)
    config = tiny_config()
    config.model.sizes = ((1, 8, 2), (2, 16, 2))
    config.train.tokens = (32, 64, 128)
    specs = study_lib.run_specs(config)
    records = []
    for spec in specs:
        N = non_embedding_params(spec["num_layers"], spec["d_model"])
        loss = float(scaling.chinchilla_loss(law, N, spec["tokens"]))
        records.append({"name": spec["name"], "spec": spec, "N": N, "N_total": N, "D": spec["tokens"],
                        "C": 6.0 * N * spec["tokens"], "C_attn": 6.0 * N * spec["tokens"],
                        "val_loss": loss, "val_bits_per_byte": loss / math.log(2),
                        "train_loss": loss, "train_seconds": 0.0})
    study_lib.save_json_atomic(str(tmp_path / "results.json"), {"runs": records})
    got, fits, table = study_lib.study(config, str(tmp_path), fit_only=True, log=lambda s: None)
    assert [r["name"] for r in got] == [s["name"] for s in specs]
    for name in ("results.json", "results.md", "loss_vs_compute.png", "frontier.png"):
        assert os.path.getsize(tmp_path / name) > 0

    N_values = sorted({r["N"] for r in records})
    D_values = sorted({r["D"] for r in records})
    at_N = fits["kaplan"]["L(D)"]
    assert at_N["N"] == N_values[-1] and at_N["offset"]["num_runs"] == 3
    # Iterative offset fit stopped at float32 rounding (see test_scaling): 1e-4.
    assert at_N["offset"]["alpha"] == pytest.approx(0.3, rel=1e-4)
    assert at_N["offset"]["E"] == pytest.approx(1.8 + 30.0 / N_values[-1] ** 0.35, rel=1e-4)
    at_D = fits["kaplan"]["L(N)"]
    L_small, L_big = (float(scaling.chinchilla_loss(law, N, D_values[-1])) for N in N_values)
    slope = math.log(L_big / L_small) / math.log(N_values[1] / N_values[0])
    assert at_D["D"] == D_values[-1]
    assert at_D["pure"]["alpha"] == pytest.approx(-slope, rel=1e-4)  # float32 logs

    # 5 parameters from 2 sizes are not identifiable, but the fitted law must
    # reproduce the runs at their own (N, D): a fit handed N and D swapped
    # would not. Within the Huber delta (1e-3 in log L), where the fit is
    # quadratic, is what convergence means here.
    ch = fits["chinchilla"]
    fitted = scaling.ChinchillaLaw(**{k: ch["params"][k] for k in ("E", "A", "B", "alpha", "beta")})
    for r in records:
        predicted = float(scaling.chinchilla_loss(fitted, r["N"], r["D"]))
        assert abs(math.log(predicted / r["val_loss"])) <= scaling.HUBER_DELTA
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        assert ch["low"][name] <= ch["high"][name], name
        assert f"| {name} |" in table
    assert len(ch["samples"]["alpha"]) == config.fit.bootstrap_samples
    # The frontier spends its budget, 6 N_opt D_opt = C, with exponent beta / (alpha + beta).
    fr = fits["frontier"]
    np.testing.assert_allclose(6 * np.multiply(fr["N_opt"], fr["D_opt"]), fr["C"], rtol=1e-5)
    assert fr["a"] == pytest.approx(ch["params"]["beta"] / (ch["params"]["alpha"] + ch["params"]["beta"]))
    # The results file keeps the runs and adds the fits; a second refit is the same.
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert saved["fits"]["chinchilla"]["params"] == ch["params"]
    _, again, _ = study_lib.study(config, str(tmp_path), fit_only=True, log=lambda s: None)
    assert again["chinchilla"]["low"] == ch["low"]


def test_fit_only_without_recorded_runs_raises(tmp_path):
    with pytest.raises(ValueError, match="no run of this config is recorded"):
        study_lib.study(tiny_config(), str(tmp_path), fit_only=True, log=lambda s: None)


def test_compute_envelope_keeps_runs_no_cheaper_run_beats():
    C = np.array([4.0, 1.0, 3.0, 2.0, 5.0])
    L = np.array([2.0, 3.0, 2.5, 3.1, 2.2])
    # In order of C: 3.0 (kept), 3.1 (beaten), 2.5, 2.0 (kept), 2.2 (beaten).
    np.testing.assert_array_equal(study_lib.compute_envelope(C, L), [1, 2, 0])


def test_bad_config_values_raise():
    config = tiny_config()
    config.train.tokens = (32, 40)
    with pytest.raises(ValueError, match=r"train.tokens holds 40; expected a positive multiple of .* = 32"):
        study_lib.run_specs(config)
    config = tiny_config()
    config.model.sizes = ((1, 10, 3),)
    with pytest.raises(ValueError, match="d_model must be a multiple of num_heads"):
        study_lib.run_specs(config)
    with pytest.raises(ValueError, match="data.eval_windows is 50; the validation split has only 7"):
        study_lib.validation_windows(np.zeros(60, np.uint8), 8, 50)
    config = tiny_config()
    config.fit.grid = "huge"
    records = [{"N": 1e6 * (i + 1), "D": 1e8, "val_loss": 3.0 - 0.1 * i} for i in range(5)]
    with pytest.raises(ValueError, match="fit.grid is 'huge'"):
        study_lib.fit_records(records, config.fit)
    with pytest.raises(ValueError, match="preset is 'big'"):
        scaling_stdlib.get_config("big")
