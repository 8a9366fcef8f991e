"""`python -m experiments.compare`: one table of tiny trained digits runs of several
families (Glow: exact NLL from its eval.json; a score SDE on 100 training images:
ODE NLL computed; a GAN: none), a toy run skipped with its reason, and the
memorization floor computed from the test images against each run's own training set."""
import json
import os

import numpy as np
import pytest

from configs import digits_glow, digits_memorize, gan_digits, toy_vpsde
from experiments import compare, datasets, main
from experiments.logging import read_metrics
from genjax import metrics


def _tiny_glow():
    c = digits_glow.get_config()
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.model.steps_per_scale = 2
    c.model.hidden = (8,)
    return c


def _tiny_memorize():
    """The over-training config shrunk: an MLP score net on the first 100 digits."""
    c = digits_memorize.get_config()
    c.model.net = "mlp"
    c.model.hidden = (32, 32)
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.sample.num_steps = 4
    c.eval.rtol = c.eval.atol = 1e-2  # plumbing, not accuracy
    return c


def _tiny_gan():
    c = gan_digits.get_config()
    c.model.width = 8
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    return c


def _tiny_toy():
    c = toy_vpsde.get_config()
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    return c


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    configs = {"glow": _tiny_glow(), "memorize": _tiny_memorize(), "gan": _tiny_gan(), "toy": _tiny_toy()}
    for name, config in configs.items():
        main.train(config, str(root / name), progress=False)
    main.evaluate(configs["glow"], str(root / "glow"), verbose=False)  # the whole test split: eval.json
    runs = compare.find_runs(runs_dir=str(root))
    result = compare.compare(runs, str(root / "compare"), num=60, repeats=1, say=lambda *a, **k: None)
    return root, configs, result


@pytest.mark.slow  # four tiny runs trained and compared (25 s at load ~2, minutes on a loaded machine)
def test_the_table_has_its_columns_labels_and_floors(table):
    root, configs, result = table
    rows = {os.path.basename(r["run"]): r for r in result["rows"]}
    assert sorted(rows) == ["gan", "glow", "memorize", "toy"]
    # NLL kinds from the registry's Family.nll_kind; the GAN has no likelihood
    assert rows["glow"]["nll_kind"] == "exact" and rows["glow"]["nll_from"] == "eval.json"
    with open(root / "glow" / "eval.json") as f:
        assert rows["glow"]["nll_nats"] == json.load(f)["nll_nats"]
    assert rows["memorize"]["nll_kind"] == "ode" and rows["memorize"]["nll_from"] == "computed"
    assert np.isfinite(rows["memorize"]["nll_nats"]) and rows["memorize"]["nll_nats"] > 0
    assert rows["gan"]["nll_kind"] == "none" and "nll_nats" not in rows["gan"]
    # the toy run is skipped, saying why
    assert "not the 8x8 digits" in rows["toy"]["skipped"]
    # the memorization floor: the test images against the run's own training set
    train, _ = datasets.load_digits("train")
    test, _ = datasets.load_digits("test")
    assert rows["glow"]["memorized_test_floor"] == pytest.approx(
        float(metrics.memorization(test, train)["fraction"]))
    assert rows["memorize"]["train_size"] == 100
    assert rows["memorize"]["memorized_test_floor"] == pytest.approx(
        float(metrics.memorization(test, train[:100])["fraction"]))
    for name in ("glow", "memorize", "gan"):
        r = rows[name]
        assert r["steps"] == 20 and r["parameters"] > 0 and r["samples_per_sec"] > 0
        assert 0.0 <= r["memorized_fraction"] <= 1.0 and r["fd"] > 0
        assert 0.0 <= r["class_entropy_nats"] <= np.log(10) + 1e-6
        # training time: the cumulative train_seconds of the run loop's metrics
        records = [rec for rec in read_metrics(str(root / name / "metrics.jsonl")) if "train_seconds" in rec]
        assert [rec["step"] for rec in records] == [10, 20]
        assert 0 < records[0]["train_seconds"] < records[1]["train_seconds"] == r["training_seconds"]
    # the markdown: header, one line per compared run, the labels, the floors, the skip
    md = result["markdown"]
    with open(root / "compare" / "compare.md") as f:
        assert f.read() == md
    assert md.splitlines()[0] == "| " + " | ".join(compare.COLUMNS) + " |"
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| exact |" in lines[str(root / "glow")]
    assert "| exact (ODE) |" in lines[str(root / "memorize")]
    assert "| none | none |" in lines[str(root / "gan")]
    assert "(100 training images)" in lines[str(root / "memorize")]
    assert "FD(train split, test split) = 11.4" in md and "Skipped:" in md
    with open(root / "compare" / "compare.json") as f:
        saved = json.load(f)
    assert [r["run"] for r in saved["rows"]] == [r["run"] for r in result["rows"]]
    assert saved["fd_floor"] == pytest.approx(11.4, abs=0.2)
    # samples.png: a panel of each compared run's first samples, kept in its row as levels
    assert (root / "compare" / "samples.png").exists()
    for name in ("glow", "memorize", "gan"):
        grid = np.asarray(rows[name]["grid_levels"])
        assert grid.shape == (min(compare.GRID_SAMPLES, 60), 8, 8) and grid.min() >= 0 and grid.max() <= 16
    assert "grid_levels" not in rows["toy"]
    # --reuse: runs that have not trained since are not measured again
    said = []
    again = compare.compare(compare.find_runs(runs_dir=str(root)), str(root / "compare"), num=60, repeats=1,
                            reuse=True, say=lambda *a, **k: said.append(a[0]))
    reused = [line for line in said if not line.startswith("wrote ")]
    assert again["rows"] == result["rows"] and len(reused) == 4
    assert all("the row measured at step" in line for line in reused)


def test_no_runs_and_bad_train_size_say_what_was_expected(tmp_path):
    from experiments.configuration import ConfigError
    from experiments import sources

    with pytest.raises(ConfigError, match="no runs"):
        compare.find_runs(runs_dir=str(tmp_path))
    config = digits_memorize.get_config()
    config.unlock()
    config.data.train_size = 1001
    with pytest.raises(ConfigError, match="data.train_size=1001; expected an integer from 1 to the 1000"):
        sources.build_source(config)
    config.data.train_size = 100
    assert sources.build_source(config).train_images.shape == (100, 8, 8, 1)
