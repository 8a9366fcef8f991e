"""Ablations: 6 combinations x 3 seeds train as one program, and its members equal
runs trained alone through experiments.main; dropout rates and other traceable
float values are per-member values of that one program too."""
import jax
import numpy as np
import pytest

from configs import toy_vpsde
from experiments import ablate, main
from tests import lm_testing


def tiny_config():
    c = toy_vpsde.get_config()
    c.model.hidden = (16, 16)
    c.data.batch_size = 64
    c.train.num_steps = 40
    c.train.steps_per_call = 20
    c.train.checkpoint_every = 40
    return c


def test_six_combinations_by_three_seeds_in_one_program_equal_solo_runs(tmp_path):
    config = tiny_config()
    sweeps = ablate.parse_sweeps(config, ["optim.learning_rate=1e-3,3e-3,1e-2",
                                          "optim.weight_decay=0,0.1"])
    rows, states, kinds = ablate.ablate(config, sweeps, seeds=3, strategy="vmap")
    assert len(rows) == 6 and len(states) == 1  # one program
    assert kinds == {"per_member": ["optim.learning_rate", "optim.weight_decay"], "structural": []}
    assert all(r["program_members"] == 18 and r["seeds"] == 3 for r in rows)
    members = [(s, lr, wd) for lr in (1e-3, 3e-3, 1e-2) for wd in (0.0, 0.1) for s in range(3)]
    for k in (0, 17):  # first and last member against solo runs
        seed, lr, wd = members[k]
        solo_config = tiny_config()
        solo_config.seed, solo_config.optim.learning_rate, solo_config.optim.weight_decay = seed, lr, wd
        solo = main.train(solo_config, str(tmp_path / f"solo{k}"), progress=False)
        member = jax.tree_util.tree_map(lambda leaf: leaf[k], states[0])
        # vmapped vs. sharded-over-8-devices reductions round differently: float32 noise.
        for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(solo.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Seeds differ, so the spread over seeds is real, and curves are recorded per step.
    assert all(r["final_loss_std"] > 0 for r in rows)
    assert np.asarray(rows[0]["loss_curves"]).shape == (3, 40)


def test_structural_values_make_one_program_each():
    config = tiny_config()
    config.train.num_steps = 20
    sweeps = ablate.parse_sweeps(config, ["data.batch_size=32,64", "optim.learning_rate=1e-3,2e-3"])
    assert sweeps == {"data.batch_size": [32, 64], "optim.learning_rate": [1e-3, 2e-3]}
    rows, states, kinds = ablate.ablate(config, sweeps, seeds=1, strategy="loop")
    assert kinds == {"per_member": ["optim.learning_rate"], "structural": ["data.batch_size"]}
    assert len(states) == 2 and [r["data.batch_size"] for r in rows] == [32, 32, 64, 64]


def test_sweep_over_a_missing_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'dropout' is not in model; valid keys there: .*'hidden'"):
        ablate.parse_sweeps(tiny_config(), ["model.dropout=0,0.1"])
    with pytest.raises(ValueError, match="expected key=v1,v2"):
        ablate.parse_sweeps(tiny_config(), ["optim.learning_rate"])


def test_dropout_and_other_float_values_are_per_member_values_of_one_program(tmp_path):
    """The issue's example: learning rates x dropout rates x seeds in ONE program (the
    dropout rate is a traced scalar), each member equal to the run trained alone."""
    (tmp_path / "lib").mkdir()
    lm_testing.fake_stdlib(tmp_path / "lib")
    config = lm_testing.tiny_config(str(tmp_path / "lib"))
    config.train.num_steps = config.train.steps_per_call = 10
    sweeps = ablate.parse_sweeps(config, ["optim.learning_rate=1e-3,3e-3", "model.dropout=0,0.3",
                                          "model.num_heads=2"])
    rows, states, kinds = ablate.ablate(config, sweeps, seeds=2, strategy="vmap")
    # An int that sets shapes stays structural; the dropout rate traces.
    assert kinds == {"per_member": ["optim.learning_rate", "model.dropout"], "structural": ["model.num_heads"]}
    assert len(states) == 1 and len(rows) == 4 and rows[0]["program_members"] == 8
    members = [(s, lr, p) for lr in (1e-3, 3e-3) for p in (0.0, 0.3) for s in range(2)]
    for k in (7,):  # dropout 0.3 (tests/test_dropout.py: a traced 0 is the identity)
        seed, lr, rate = members[k]
        solo_config = lm_testing.tiny_config(str(tmp_path / "lib"))
        solo_config.train.num_steps = solo_config.train.steps_per_call = 10
        solo_config.seed, solo_config.optim.learning_rate, solo_config.model.dropout = seed, lr, rate
        solo = main.train(solo_config, str(tmp_path / f"solo{k}"), progress=False)
        member = jax.tree_util.tree_map(lambda leaf: leaf[k], states[0])
        for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(solo.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # vmapped vs. sharded reductions
    # Dropout changes training: the two rates' losses differ at the same lr and seeds.
    assert rows[0]["final_loss_mean"] != rows[1]["final_loss_mean"]


def test_a_float_used_as_a_python_number_is_structural():
    config = tiny_config()
    config.model.hidden = (16,)
    base = main.Experiment(config)
    # model.beta_max enters the SDE's arithmetic only: traced.
    assert ablate.traced_keys(base, {"model.beta_max": [10.0, 20.0]}) == ["model.beta_max"]
    # The optimizer branches on the clipping threshold in Python; sizes are ints;
    # data values build the shared data source.
    assert ablate.traced_keys(base, {"optim.grad_clip": [1.0, 2.0], "data.batch_size": [32, 64]}) == []
    with config.unlocked():
        config.data.scale = 1.0  # unused by the source, so it would trace, but data.* never does
    assert ablate.traced_keys(main.Experiment(config), {"data.scale": [1.0, 2.0]}) == []
