"""Inputs a run cannot use are refused before anything runs, and a workdir's saved
config is the identity of its run (experiments/configuration.py,
experiments/run_config.py): each bad value is one line naming the key, the value
and what was expected (exit code 2 on the command line, no traceback); a resume
with another config lists every differing key and leaves config.json as it was;
the keys that may change on resume, and the explicit --allow_config_change, train
on and are recorded; repeated tuple overrides replace; a TFDS dataset that is not
prepared is one message."""
import ast
import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import base_ebm, base_gan, gan_grid25, lm_stdlib, toy_reflow, toy_vpsde
from experiments import configuration, datasets, main, run_config, sources
from experiments.configuration import ConfigError
from genjax import train as train_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_PATH = REPO / "configs" / "toy_vpsde.py"
# The tiny run every test here trains, as command-line overrides of configs/toy_vpsde.py.
TINY = {"model.hidden": "(32,32)", "data.batch_size": "128", "train.num_steps": "200",
        "train.steps_per_call": "50", "train.checkpoint_every": "100", "sample.num": "64",
        "sample.num_steps": "20", "eval.num": "64", "eval.grid_size": "8"}


def tiny_config(changes: dict | None = None):
    """configs/toy_vpsde.py with TINY and then `changes` ({dotted key: value}) set."""
    config = toy_vpsde.get_config()
    for key, value in {**{k: ast.literal_eval(v) for k, v in TINY.items()}, **(changes or {})}.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _cli(workdir, *extra, mode="train", config_path=CONFIG_PATH, overrides=TINY):
    """experiments.main in a subprocess (by default on the tiny config); returns the
    CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    config = [f"--config={config_path}"] if config_path is not None else []
    command = [sys.executable, "-m", "experiments.main", *config, f"--workdir={workdir}",
               f"--mode={mode}", *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run interrupted at step 100 of 200: (workdir, its config.json bytes)."""
    wd = str(tmp_path_factory.mktemp("run") / "w")
    main.train(tiny_config(), wd, stop_after=100, progress=False)
    return wd, _read(os.path.join(wd, run_config.CONFIG_FILE))


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, line", [
    ({"data.batch_size": 0}, "data.batch_size=0; expected a positive integer"),
    ({"train.steps_per_call": 0}, "train.steps_per_call=0; expected a positive integer"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every=0; expected a positive integer"),
    ({"train.num_steps": 0}, "train.num_steps=0; expected a positive integer"),
    ({"train.num_steps": -20}, "train.num_steps=-20; expected a positive integer"),
    ({"train.num_steps": 230}, "train.num_steps=230; expected a multiple of train.steps_per_call=50 "
                               "(one compiled call runs that many steps)"),
    ({"train.checkpoint_every": 75}, "train.checkpoint_every=75; expected a multiple of "
                                     "train.steps_per_call=50 (one compiled call runs that many steps)"),
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints=0; expected a positive integer"),
    ({"train.host_loop": "yes"}, "train.host_loop='yes'; expected one of ['auto', 'off', 'on']"),
    ({"train.spike_factor": 0.5}, "train.spike_factor=0.5; expected a number > 1 (0: the loss-spike rule is off)"),
    ({"optim.learning_rate": -1.0}, "optim.learning_rate=-1.0; expected a finite number >= 0"),
    ({"optim.learning_rate": float("nan")}, "optim.learning_rate=nan; expected a finite number >= 0"),
    ({"optim.weight_decay": -0.1}, "optim.weight_decay=-0.1; expected a finite number >= 0"),
    ({"optim.warmup_steps": -1}, "optim.warmup_steps=-1; expected an integer >= 0"),
    ({"optim.grad_clip": -1.0}, "optim.grad_clip=-1.0; expected a finite number > 0, or 0 or None for no clipping"),
    ({"optim.ema_decay": 1.0}, "optim.ema_decay=1.0; expected a number in [0, 1)"),
    ({"optim.b2": 1.5}, "optim.b2=1.5; expected a number in [0, 1)"),
    ({"optim.schedule": "cosin"}, "optim.schedule='cosin'; expected one of ['constant', 'cosine', 'linear']"),
    ({"model.sde": "vpp"}, "model.sde='vpp'; expected one of ['ddpm_cosine', 'ddpm_linear', 'subvp', 've', 'vp']"),
    ({"sample.method": "euler"}, "sample.method='euler'; expected one of ['ancestral', 'ddim', 'dpm_solver', "
                                 "'edm_heun', 'ode', 'pc']"),
    ({"sample.num": 0}, "sample.num=0; expected a positive integer"),
    ({"eval.num": -1}, "eval.num=-1; expected an integer >= 0"),
])
def test_each_bad_value_is_one_line_naming_key_value_and_expectation(changes, line):
    assert configuration.problems(tiny_config(changes)) == [line]


def test_unknown_family_lists_the_registry():
    found = configuration.problems(tiny_config({"family": "not_a_family"}))
    assert found[0].startswith("family='not_a_family'; expected one of ['cnf', 'ddpm', 'ebm', ")


def test_parameter_groups_and_grad_accumulation_are_checked():
    gan = gan_grid25.get_config()
    gan.optim.critic.learning_rate = -1e-4
    gan.optim.generator.b1 = 1.0
    assert sorted(configuration.problems(gan)) == [
        "optim.critic.learning_rate=-0.0001; expected a finite number >= 0",
        "optim.generator.b1=1.0; expected a number in [0, 1)"]
    lm = lm_stdlib.get_config()
    lm.train.grad_accum_steps = 3
    assert configuration.problems(lm) == [
        f"data.batch_size={lm.data.batch_size}; expected a multiple of train.grad_accum_steps=3 "
        f"(each batch is split into that many micro-batches)"]


def test_train_refuses_bad_values_before_creating_the_workdir(tmp_path):
    wd = tmp_path / "w"
    with pytest.raises(ConfigError) as info:
        main.train(tiny_config({"data.batch_size": 0, "optim.learning_rate": -1.0}), str(wd), progress=False)
    assert info.value.problems == ["data.batch_size=0; expected a positive integer",
                                   "optim.learning_rate=-1.0; expected a finite number >= 0"]
    assert not wd.exists()


def test_fsdp_must_divide_the_devices(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.fsdp=3; expected a divisor of the \d+ devices"):
        main.train(tiny_config({"train.fsdp": 3}), str(tmp_path / "w"), progress=False)
    assert not (tmp_path / "w").exists()


def _shipped_configs():
    """(file, variant) of every config in configs/, with each argument it takes."""
    variants = {"scaling_stdlib": ("default", "reduced"), "ebm_digits": ("cd",)}
    cases = []
    for path in sorted((REPO / "configs").glob("*.py")):
        name = path.stem
        if name.startswith(("base_", "common", "__")):
            continue
        if name.startswith("ebm_"):
            choices = variants.get(name, base_ebm.OBJECTIVES)
        elif name.startswith("gan_"):
            choices = base_gan.LOSSES
        else:
            choices = variants.get(name, (None,))
        cases += [(name, v) for v in choices]
    return cases


@pytest.mark.parametrize("name, variant", _shipped_configs())
def test_every_shipped_config_validates(name, variant):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config() if variant is None else module.get_config(variant)
    assert configuration.problems(config) == []


def test_command_line_bad_values_exit_2_with_one_line_each(tmp_path):
    proc = _cli(tmp_path / "w", "--config.data.batch_size=0", "--config.optim.learning_rate=-1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["error: data.batch_size=0; expected a positive integer",
                                        "error: optim.learning_rate=-1.0; expected a finite number >= 0"]
    assert not (tmp_path / "w").exists()


def test_command_line_workdir_that_is_a_file_exits_2(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    proc = _cli(path)
    assert proc.returncode == 2, proc.stderr
    assert f"error: --workdir={path} is a file; expected a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- tuple overrides

def _parse(argv):
    """The config that ml_collections' own flag parsing makes of argv."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def test_a_repeated_whole_tuple_override_replaces_the_earlier_one():
    argv = ["prog", f"--config={CONFIG_PATH}", "--config.model.hidden=(32,32)", "--config.model.hidden=(64,64)"]
    assert _parse(list(argv)).model.hidden == (32, 32, 64, 64)  # ml_collections alone concatenates
    assert _parse(configuration.last_tuple_override_wins(argv)).model.hidden == (64, 64)
    # its one-element-per-flag form still builds a tuple
    elements = ["prog", f"--config={CONFIG_PATH}", "--config.model.hidden=16", "--config.model.hidden=8"]
    assert _parse(configuration.last_tuple_override_wins(elements)).model.hidden == (16, 8)


# ----------------------------------------------------------------------------- resume

def test_resume_with_another_config_lists_each_key_and_changes_nothing(trained):
    wd, saved = trained
    changed = tiny_config({"seed": 1, "data.batch_size": 64, "optim.learning_rate": 1e-2,
                           "model.hidden": (64, 64)})
    with pytest.raises(ConfigError) as info:
        main.train(changed, wd, progress=False)
    message = str(info.value)
    for line in ["  data.batch_size: 128 -> 64", "  model.hidden: [32, 32] -> [64, 64]",
                 "  optim.learning_rate: 0.002 -> 0.01", "  seed: 0 -> 1"]:
        assert line in message.splitlines()
    assert "--allow_config_change=data.batch_size,model.hidden,optim.learning_rate" in message
    assert "seed cannot change on resume" in message
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved
    assert not os.path.exists(os.path.join(wd, run_config.CHANGES_FILE))
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["100"]


def test_command_line_width_change_is_refused_before_anything_runs(trained):
    """The repeated tuple goes through the real flag parsing: the run is asked for
    (64, 64), which the saved (32, 32) run refuses with exit code 2."""
    wd, saved = trained
    proc = _cli(wd, "--config.model.hidden=(32,32)", "--config.model.hidden=(64,64)")
    assert proc.returncode == 2, proc.stderr
    assert "  model.hidden: [32, 32] -> [64, 64]" in proc.stderr.splitlines()
    assert proc.stderr.startswith("error: the config differs from the run in ") and "Traceback" not in proc.stderr
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved


def test_sample_mode_neither_rewrites_config_json_nor_needs_the_training_keys(trained):
    wd, saved = trained
    proc = _cli(wd, "--config.sample.num=16", mode="sample")
    assert proc.returncode == 0, proc.stderr
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved
    assert not os.path.exists(os.path.join(wd, run_config.CHANGES_FILE))
    assert np.load(os.path.join(wd, "samples.npz"))["samples"].shape == (16, 2)


def test_sample_and_eval_take_the_runs_config_without_repeating_its_overrides(trained):
    """The run was trained with model.hidden=(32,32); the config file says (256, 256, 256):
    sample and eval read config.json, so the checkpoint restores without the override."""
    wd, saved = trained
    for config_path in (CONFIG_PATH, None):  # with the config file's defaults, and without any file
        proc = _cli(wd, "--config.sample.num=8", mode="sample", config_path=config_path, overrides={})
        assert proc.returncode == 0, proc.stderr
        assert f"config: {os.path.join(wd, run_config.CONFIG_FILE)} (the trained run's), sample.num=8" in proc.stdout
        assert np.load(os.path.join(wd, "samples.npz"))["samples"].shape == (8, 2)
        assert f"wrote {os.path.join(wd, 'samples.npz')}" in proc.stdout
    proc = _cli(wd, "--config.eval.params=raw", mode="eval", config_path=None, overrides={})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(_read(os.path.join(wd, "eval.json")))["params"] == "raw"
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved
    assert not os.path.exists(os.path.join(wd, run_config.CHANGES_FILE))


def test_a_training_override_on_sample_is_an_error_naming_the_key(trained):
    wd, saved = trained
    before = sorted(os.listdir(wd))
    proc = _cli(wd, "--config.optim.learning_rate=0.1", mode="sample", config_path=None, overrides={})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: --config.optim.learning_rate=0.1: optim.learning_rate is part of the "
                            "trained run in ") and "(saved: 0.002)" in first
    assert "may set only eval.*, sample.*, compress.*, compare.* and data.data_dir" in proc.stderr
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved
    assert sorted(os.listdir(wd)) == before


def test_sample_of_another_familys_config_or_an_empty_workdir_is_refused(trained, tmp_path):
    wd, _ = trained
    proc = _cli(wd, mode="sample", config_path=REPO / "configs" / "toy_flow_matching.py", overrides={})
    assert proc.returncode == 2 and "is a 'flow_matching' config but" in proc.stderr
    proc = _cli(str(tmp_path / "empty"), mode="eval", config_path=None, overrides={})
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: no trained run in {tmp_path / 'empty'}")


def test_a_budget_below_the_checkpoint_trains_nothing_and_says_so(trained, capsys):
    wd, saved = trained
    state = main.train(tiny_config({"train.num_steps": 50}), wd, progress=False)
    assert int(state.step) == 100
    assert "is at step 100, past train.num_steps=50; nothing was trained" in capsys.readouterr().err
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved
    assert not os.path.exists(os.path.join(wd, run_config.CHANGES_FILE))


def test_sample_mode_needs_a_trained_run(tmp_path):
    with pytest.raises(ConfigError, match=r"^no checkpoint in .*; train it first"):
        main.check_run(tiny_config(), str(tmp_path / "w"))


def test_a_longer_step_budget_resumes_and_is_recorded(tmp_path):
    wd = str(tmp_path / "w")
    main.train(tiny_config(), wd, stop_after=100, progress=False)
    saved = _read(os.path.join(wd, run_config.CONFIG_FILE))
    state = main.train(tiny_config({"train.num_steps": 300}), wd, progress=False)
    assert int(state.step) == 300
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved  # the identity stays
    (record,) = run_config.recorded_changes(wd)
    assert record["from_step"] == 100
    assert record["changes"] == [{"key": "train.num_steps", "saved": 200, "requested": 300,
                                  "allowed_by": "may change on resume"}]
    assert run_config.saved_config(wd)["train"]["num_steps"] == 300
    # the same config again differs from nothing: no new record
    main.train(tiny_config({"train.num_steps": 300}), wd, progress=False)
    assert len(run_config.recorded_changes(wd)) == 1


def test_steps_per_call_and_host_loop_may_change_because_the_steps_are_the_same(tmp_path):
    full = main.train(tiny_config(), str(tmp_path / "full"), progress=False)
    wd = str(tmp_path / "resumed")
    main.train(tiny_config(), wd, stop_after=100, progress=False)
    resumed = main.train(tiny_config({"train.steps_per_call": 25, "train.host_loop": "on"}), wd, progress=False)
    for a, b in zip(_leaves(full), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_allowed_learning_rate_change_takes_effect_and_is_recorded(tmp_path):
    wd = str(tmp_path / "w")
    main.train(tiny_config(), wd, stop_after=100, progress=False)
    saved = _read(os.path.join(wd, run_config.CONFIG_FILE))
    faster = tiny_config({"optim.learning_rate": 1e-2})
    state = main.train(faster, wd, progress=False, allow_changes=["optim.learning_rate"])
    # without the reset, the restored optimizer state would keep training at 2e-3
    assert float(train_lib.get_hyperparams(state.opt_state)["learning_rate"]) == np.float32(1e-2)
    assert _read(os.path.join(wd, run_config.CONFIG_FILE)) == saved
    (record,) = run_config.recorded_changes(wd)
    assert record["from_step"] == 100
    assert record["changes"] == [{"key": "optim.learning_rate", "saved": 0.002, "requested": 0.01,
                                  "allowed_by": "--allow_config_change"}]
    # the checkpoints are now those of 1e-2: the old value is the change now
    with pytest.raises(ConfigError, match=r"optim.learning_rate: 0.01 -> 0.002"):
        main.train(tiny_config({"train.num_steps": 300}), wd, progress=False)


def test_allowed_width_change_is_refused_once_the_checkpoint_shows_other_shapes(tmp_path):
    wd = str(tmp_path / "w")
    main.train(tiny_config(), wd, stop_after=100, progress=False)
    with pytest.raises(ConfigError, match=r"the checkpoint holds arrays of other shapes than this config's "
                                          r"model .*saved \(32,\) -> requested \(64,\)"):
        main.train(tiny_config({"model.hidden": (64, 64)}), wd, progress=False, allow_changes=["model.hidden"])
    assert not os.path.exists(os.path.join(wd, run_config.CHANGES_FILE))


def test_allow_names_real_keys_and_never_the_seed(trained):
    wd, _ = trained
    with pytest.raises(ConfigError, match=r"--allow_config_change=seed: seed cannot change on resume"):
        run_config.check_workdir(wd, tiny_config({"seed": 1}), allow=["seed"])
    with pytest.raises(ConfigError, match=r"--allow_config_change=optim.lr: 'optim.lr' is not a key"):
        run_config.check_workdir(wd, tiny_config(), allow=["optim.lr"])
    # a section allows every key under it
    plan = run_config.check_workdir(wd, tiny_config({"optim.b1": 0.5, "optim.grad_clip": 2.0}), allow=["optim"])
    assert sorted(plan.accepted) == ["optim.b1", "optim.grad_clip"]


def test_config_json_without_checkpoints_is_replaced_and_checkpoints_without_it_are_adopted(tmp_path, capsys):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / run_config.CONFIG_FILE).write_text(json.dumps({"seed": 7}))
    plan = run_config.check_workdir(str(wd), tiny_config())
    assert plan.new_run
    run_config.commit(plan, writer=True)
    assert json.loads((wd / run_config.CONFIG_FILE).read_text()) == run_config.as_json(tiny_config())
    assert "described no checkpoint" in capsys.readouterr().err

    (wd / "checkpoints" / "100").mkdir(parents=True)
    (wd / run_config.CONFIG_FILE).unlink()
    plan = run_config.check_workdir(str(wd), tiny_config())
    assert plan.adopted and not plan.new_run
    run_config.commit(plan, writer=True)
    assert "could not be checked" in capsys.readouterr().err
    assert json.loads((wd / run_config.CONFIG_FILE).read_text()) == run_config.as_json(tiny_config())
    with pytest.raises(ConfigError, match="never rewritten"):
        run_config.write_identity(str(wd), {"seed": 1})


def test_stage_checkpoints_in_subdirectories_bind_a_reflow_workdir(tmp_path):
    """experiments.reflow keeps each stage's checkpoints in <workdir>/<stage>: they
    bind the workdir's config.json as a run's own checkpoints do; any section named
    train has the keys that may change."""
    wd = str(tmp_path)
    run_config.write_identity(wd, run_config.as_json(toy_reflow.get_config()))
    os.makedirs(os.path.join(wd, "reflow", "checkpoints", "3000"))
    changed = toy_reflow.get_config()
    changed.reflow.num_pairs = 100
    changed.reflow.train.num_steps = 6000
    with pytest.raises(ConfigError) as info:
        run_config.check_workdir(wd, changed)
    lines = str(info.value).splitlines()
    assert "  reflow.num_pairs: 20000 -> 100" in lines
    assert not any("reflow.train.num_steps" in line for line in lines[1:-1])


# ----------------------------------------------------------------------------- TFDS data

def test_tfds_dataset_not_prepared_is_one_message(tmp_path):
    """A toy config pointed at tfds:mnist (no model.conditional) reaches the data
    check: one message naming the dataset, the data dir and how to prepare it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tiny_config({"data.name": "tfds:mnist"})
    with config.unlocked():
        config.data.data_dir = str(empty)
    with pytest.raises(datasets.DatasetUnavailable) as info:
        sources.build_source(config)
    message = str(info.value)
    assert message.startswith(f"TFDS dataset 'mnist' is not prepared in {empty}; nothing is downloaded here.")
    assert "tfds build mnist --file_format=array_record --data_dir=DIR" in message
    assert "--config.data.data_dir=DIR" in message
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_tfds_not_installed_is_one_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as when absent
    with pytest.raises(datasets.DatasetUnavailable, match=r"^TFDS dataset 'mnist' needs the package "
                                                          r"tensorflow-datasets, which is not installed"):
        datasets.load_tfds_images("mnist", "train")


def test_command_line_tfds_not_prepared_exits_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(tmp_path / "w", "--config.data.name=tfds:mnist", f"--config.data.data_dir={empty}",
                config_path=REPO / "configs" / "digits_score_sde.py", overrides={})
    assert proc.returncode == 2, proc.stderr
    assert f"error: TFDS dataset 'mnist' is not prepared in {empty}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "w" / run_config.CONFIG_FILE)
