"""Evaluations in batches with a progress bar (experiments/progress.py, used by the
sources' evaluate): the batched numbers equal the unbatched ones, each batch draws
its own randomness, and the bar and the paths written show only when asked and
only on the writing process."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import toy_vpsde
from experiments import datasets, distributed, plots, progress, sources
from experiments.experiment import Experiment
from genjax.core import Model


def test_map_batches_pads_the_last_batch_and_folds_the_batch_index_into_the_key(capsys):
    x = np.arange(10, dtype=np.float32)[:, None]
    seen = []

    def fn(key, chunk):
        seen.append((np.asarray(key), chunk.shape))
        return chunk[:, 0] * 2

    out = progress.map_batches(fn, x, 4, jax.random.PRNGKey(1), desc="double", progress=False)
    np.testing.assert_array_equal(out, 2 * x[:, 0])
    # 3 batches, all of 4 rows (one compiled program), the last padded with copies
    assert [shape for _, shape in seen] == [(4, 1)] * 3
    for b, (key, _) in enumerate(seen):
        np.testing.assert_array_equal(key, np.asarray(jax.random.fold_in(jax.random.PRNGKey(1), b)))
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="no examples"):
        progress.map_batches(fn, x[:0], 4, jax.random.PRNGKey(1), desc="empty", progress=False)


def test_bar_and_paths_show_only_when_asked_and_on_the_writer(capsys, monkeypatch):
    x = np.zeros((6, 2), np.float32)
    progress.map_batches(lambda k, c: c[:, 0], x, 2, jax.random.PRNGKey(0), desc="held-out NLL")
    progress.wrote("somewhere/density.png")
    out = capsys.readouterr().out
    assert "held-out NLL" in out and "3/3" in out and "wrote somewhere/density.png\n" in out
    monkeypatch.setattr(distributed, "is_writer", lambda: False)  # process 1 of a multi-process run
    progress.map_batches(lambda k, c: c[:, 0], x, 2, jax.random.PRNGKey(0), desc="held-out NLL")
    progress.wrote("somewhere/density.png")
    assert capsys.readouterr().out == ""


def _toy(batch_size=None, num=50, grid_size=6):
    config = toy_vpsde.get_config()
    config.model.hidden = (16, 16)
    config.eval.num = num
    config.eval.grid_size = grid_size
    if batch_size is None:
        with config.unlocked():
            del config.eval["batch_size"]  # a run saved before eval.batch_size existed
    else:
        config.eval.batch_size = batch_size
    exp = Experiment(config)
    return exp, exp.init_state().params


def _evaluate(exp, params, tmp_path, monkeypatch, log_prob_kwargs, **kwargs):
    grids = []
    monkeypatch.setattr(plots, "density_heatmap", lambda path, logp, lim, title: grids.append(np.asarray(logp)))
    result = exp.source.evaluate(exp.model, params, str(tmp_path), log_prob_kwargs=log_prob_kwargs,
                                 progress=False, **kwargs)
    return result, grids[-1]


def test_toy_nll_and_heatmap_in_batches_equal_one_call(tmp_path, monkeypatch):
    # Exact divergence (no probes: the key is unused) and a fixed-step solver (the
    # same time grid for every batch): each point's log-density is a function of the
    # point alone, so 7 batches of 8 (the last padded) equal one call on all 50
    # points up to float rounding. A batch of 512 > 50 is one call.
    fixed = {"exact_divergence": True, "method": "rk4", "num_steps": 8, "eps": 1e-5}
    exp, params = _toy(batch_size=8)
    batched, grid_batched = _evaluate(exp, params, tmp_path, monkeypatch, fixed)
    exp1, _ = _toy(batch_size=512)
    whole, grid_whole = _evaluate(exp1, params, tmp_path, monkeypatch, fixed)
    assert batched["num_eval"] == whole["num_eval"] == 50
    assert batched["nll_nats"] == pytest.approx(whole["nll_nats"], rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(grid_batched, grid_whole, rtol=1e-5, atol=1e-5)
    # the direct computation: log_prob on all held-out points in one call
    x = exp.source.held_out(50)
    direct = -np.mean(np.asarray(exp.model.log_prob(params, jax.random.PRNGKey(1), x, **fixed)))
    assert batched["nll_nats"] == pytest.approx(float(direct), rel=1e-6, abs=1e-6)


def test_toy_nll_with_the_adaptive_solver_agrees_to_its_tolerance(tmp_path, monkeypatch):
    # The adaptive solver picks one step sequence per batch (set by the batch's worst
    # example), so batches of another size take other steps: the NLLs agree to
    # the solver's tolerance (1e-5 per coordinate), not to float rounding.
    adaptive = {"exact_divergence": True, "rtol": 1e-5, "atol": 1e-5, "eps": 1e-5}
    exp, params = _toy(batch_size=16, grid_size=2)
    batched, _ = _evaluate(exp, params, tmp_path, monkeypatch, adaptive)
    exp1, _ = _toy(batch_size=512, grid_size=2)
    whole, _ = _evaluate(exp1, params, tmp_path, monkeypatch, adaptive)
    assert batched["nll_nats"] == pytest.approx(whole["nll_nats"], abs=1e-3)


def test_hutchinson_batches_draw_their_own_probes_reproducibly(tmp_path, monkeypatch):
    # With Hutchinson probes each batch b draws from fold_in(key, b): the same
    # eval.batch_size gives the same NLL twice, and no two batches share probes
    # (a shared key would repeat the first batch's probes in every batch).
    hutchinson = {"exact_divergence": False, "method": "rk4", "num_steps": 4, "eps": 1e-5}
    exp, params = _toy(batch_size=10, grid_size=2)
    first, _ = _evaluate(exp, params, tmp_path, monkeypatch, hutchinson)
    again, _ = _evaluate(exp, params, tmp_path, monkeypatch, hutchinson)
    assert first["nll_nats"] == again["nll_nats"]
    # a "log-density" that is the key's own uniform draw: the 5 batches of 10 used
    # fold_in(PRNGKey(1), b) for b = 0..4
    draws = exp.model._replace(log_prob=lambda p, key, x, **kw: jax.random.uniform(key, (len(x),)))
    result = exp.source.evaluate(draws, params, str(tmp_path), log_prob_kwargs={}, heatmap=False, progress=False)
    expected = np.concatenate([jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(1), b), (10,))
                               for b in range(5)])
    assert result["nll_nats"] == pytest.approx(-float(expected.mean()), rel=1e-6)
    shared = np.tile(jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(1), 0), (10,)), 5)
    assert result["nll_nats"] != pytest.approx(-float(shared.mean()), rel=1e-6)


def test_runs_saved_without_eval_batch_size_evaluate_with_the_default(tmp_path, monkeypatch):
    fixed = {"exact_divergence": True, "method": "euler", "num_steps": 2, "eps": 1e-5}
    exp, params = _toy(batch_size=None, num=20, grid_size=2)
    assert "batch_size" not in exp.config.eval
    result, grid = _evaluate(exp, params, tmp_path, monkeypatch, fixed)
    assert result["num_eval"] == 20 and np.all(np.isfinite(grid))


def test_toy_evaluate_shows_bars_and_the_figure_path(tmp_path, capsys):
    exp, params = _toy(batch_size=8, num=16, grid_size=4)
    fixed = {"exact_divergence": True, "method": "euler", "num_steps": 2, "eps": 1e-5}
    exp.source.evaluate(exp.model, params, str(tmp_path), log_prob_kwargs=fixed, step=3)
    out = capsys.readouterr().out
    assert "held-out NLL (16 points)" in out and "density heatmap (4x4 points)" in out
    assert out.count(f"wrote {tmp_path / 'density.png'}\n") == 1
    exp.source.evaluate(exp.model, params, str(tmp_path), log_prob_kwargs=fixed, step=3, progress=False)
    assert capsys.readouterr().out == ""


def test_digits_discrete_nll_in_batches_equals_one_call(capsys):
    # A per-image log-density without randomness (a standard normal in model
    # space): any batch size gives the same per-image bound; the dequantization
    # noise is drawn once for the split, before batching.
    config = ml_collections.ConfigDict({"seed": 0, "model": {"conditional": False},
                                        "eval": {"split": "test", "num": 23, "batch_size": 5}})
    source = sources.ImageSource(config, datasets.load_digits, datasets.DIGITS_LEVELS,
                                 datasets.DIGITS_CLASSES, has_classifier=False)
    normal = lambda params, key, y: -0.5 * jnp.sum(y.reshape(len(y), -1) ** 2, 1)  # noqa: E731
    model = Model(init=None, loss=None, sample=None, log_prob=normal)
    batched = source.discrete_nll(model, None, "test", num=23, batch_size=5)
    whole = source.discrete_nll(model, None, "test", num=23, batch_size=23)
    assert batched.shape == (23,)
    np.testing.assert_allclose(batched, whole, rtol=1e-6)
    result = source.evaluate(model, None, "unused", log_prob_kwargs={})
    assert result["num_eval"] == 23 and result["nll_nats"] == pytest.approx(float(whole.mean()), rel=1e-6)
    assert "test NLL (23 images)" in capsys.readouterr().out
