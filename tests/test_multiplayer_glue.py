"""A family with parameter groups and model state through the glue: a GAN with
n_critic = 5 and spectral-norm state resumes bit for bit, its seeds and critic
learning rates train as one ensemble program whose members equal runs trained
alone, and a misspelled group is named."""
import jax
import numpy as np
import pytest

from experiments import ablate, configuration, main, run_loop
from tests import gan_testing


def tiny_gan(**model):
    """Five critic updates per generator update (the paper's n_critic), lambda = 10."""
    return gan_testing.tiny_gan_config(hidden=(16, 16), steps_per_call=5, checkpoint_every=10,
                                       n_critic=5, gp_weight=10.0, **model)


def _leaves(state):
    raw = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    return [np.asarray(raw(x)) for x in jax.tree_util.tree_leaves(state)]


def test_a_gan_with_five_critic_updates_and_state_resumes_bit_for_bit(tmp_path):
    config = tiny_gan(spectral_norm=True)
    whole = main.train(config, str(tmp_path / "whole"), progress=False)
    main.train(config, str(tmp_path / "cut"), stop_after=10, progress=False)
    resumed = main.train(config, str(tmp_path / "cut"), progress=False)
    assert int(resumed.step) == 20
    assert resumed.model_state is not None  # the spectral-norm vectors travelled too
    for a, b in zip(_leaves(whole), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    # 5 critic updates per generator update: the critic's Adam counted 100, the generator's 20
    assert max(int(np.max(x)) for x in _leaves(resumed.opt_state["critic"]) if x.dtype == np.int32) == 100
    assert max(int(np.max(x)) for x in _leaves(resumed.opt_state["generator"]) if x.dtype == np.int32) == 20


def _train_alone_on_one_device(config):
    """The run main.train makes, but unplaced (one device), as the ablation's members are."""
    exp = main.Experiment(config)
    tc = config.train
    state, _ = run_loop.run(exp.init_state(), exp.compiled_train_fn, num_steps=tc.num_steps,
                            steps_per_call=tc.steps_per_call, place=False)
    return state


def _assert_equal_up_to_rounding(a, b, adam_step):
    """vmap batches the members' matmuls, which XLA may sum in another order than one
    member's: float32 rounding (~1e-8 here). Adam divides a gradient by its own running
    size, so where a unit's gradient is ~0 (a nearly dead ReLU) that rounding can flip
    its sign and move the one coordinate by up to a learning rate: allow that for at
    most one coordinate per tensor."""
    off = np.abs(a - b) > 1e-6 + 1e-5 * np.abs(b)
    assert off.sum() <= 1, f"{off.sum()} of {off.size} coordinates differ beyond rounding"
    assert np.all(np.abs(a - b)[off] <= adam_step), np.abs(a - b)[off]


def test_seeds_and_critic_learning_rates_in_one_program_equal_runs_alone():
    def short(config):
        config.train.num_steps = config.train.checkpoint_every = 10
        return config

    config = short(tiny_gan())
    sweeps = ablate.parse_sweeps(config, ["optim.critic.learning_rate=1e-4,3e-4"])
    rows, states, kinds = ablate.ablate(config, sweeps, seeds=2, strategy="vmap")
    assert kinds == {"per_member": ["optim.critic.learning_rate"], "structural": []}
    assert len(states) == 1 and rows[0]["program_members"] == 4
    members = [(s, lr) for lr in (1e-4, 3e-4) for s in range(2)]
    for k in (0, 3):
        seed, lr = members[k]
        solo_config = short(tiny_gan())
        solo_config.seed, solo_config.optim.critic.learning_rate = seed, lr
        solo = _train_alone_on_one_device(solo_config)
        member = jax.tree_util.tree_map(lambda leaf: leaf[k], states[0])
        for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(solo.params)):
            _assert_equal_up_to_rounding(np.asarray(a), np.asarray(b), adam_step=lr)
    hp = main.train_lib.get_hyperparams(states[0].opt_state)
    np.testing.assert_allclose(hp["critic.learning_rate"], [1e-4, 1e-4, 3e-4, 3e-4], rtol=1e-6)
    generator_lr = config.optim.generator.learning_rate
    np.testing.assert_allclose(hp["generator.learning_rate"], [generator_lr] * 4, rtol=1e-6)
    # the members really differ: seeds and critic learning rates give other critics
    w = states[0].params["critic"]["Dense_0"]["kernel"]
    assert float(np.max(np.abs(w[0] - w[1]))) > 1e-3 and float(np.max(np.abs(w[0] - w[2]))) > 1e-3


def test_a_group_the_family_does_not_have_lists_its_groups():
    config = tiny_gan()
    with pytest.raises(ValueError, match=r"'critc' is not in optim; .* The parameter groups of this "
                                         r"config's family are \['critic', 'generator'\]"):
        configuration.check_override_key(config, "optim.critc.learning_rate")
    with pytest.raises(ValueError, match=r"The parameter groups of this config's family are"):
        ablate.parse_sweeps(config, ["optim.critc.learning_rate=1e-3,2e-3"])


def test_an_ablation_stepped_from_python_trains_the_same_members():
    """train.host_loop = on (what convolutional nets get on CPU): one jitted ensemble
    step per call instead of a scan over steps_per_call, the same members and curves."""
    results = {}
    for choice in ("off", "on"):
        config = tiny_gan()
        config.train.num_steps = 10
        config.train.host_loop = choice
        sweeps = ablate.parse_sweeps(config, ["optim.critic.learning_rate=1e-4,3e-4"])
        rows, states, _ = ablate.ablate(config, sweeps, seeds=1, strategy="vmap")
        assert np.asarray(rows[0]["loss_curves"]).shape == (1, 10)
        results[choice] = (rows, states[0])
    (rows_off, scanned), (rows_on, stepped) = results["off"], results["on"]
    np.testing.assert_allclose(np.asarray(rows_on[1]["loss_curves"]), np.asarray(rows_off[1]["loss_curves"]),
                               rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(stepped.params), jax.tree_util.tree_leaves(scanned.params)):
        for k in range(2):
            _assert_equal_up_to_rounding(np.asarray(a[k]), np.asarray(b[k]), adam_step=3e-4)
