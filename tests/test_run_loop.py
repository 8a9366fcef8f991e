"""The one run loop (experiments/run_loop.py): resume, guard, ensembles."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import ablate, run_loop
from experiments.logging import read_metrics
from genjax import train


def _stateful_loss(params, key, batch, model_state):
    """Least squares whose model state keeps a running sum of the batches seen."""
    r = batch @ params["w"] - 1.0
    return jnp.mean(r**2), ({}, {"seen": model_state["seen"] + batch.sum(0)})


def _state():
    tx = optax.adam(1e-2)
    init = lambda k, b: {"w": jax.random.normal(k, (3,))}  # noqa: E731
    return tx, train.init_state(init, tx, jax.random.key(0), jnp.zeros((4, 3)),
                                init_model_state=lambda k, b: {"seen": jnp.zeros(3)})


def _make_step(tx, loss=_stateful_loss):
    batch_fn = lambda k, s: jax.random.normal(jax.random.fold_in(k, s), (4, 3))  # noqa: E731
    return lambda mesh: jax.jit(train.make_train_fn(loss, tx, steps_per_call=5, batch_fn=batch_fn, mesh=mesh),
                                donate_argnums=0)


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    tx, state = _state()
    whole, _ = run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5,
                            workdir=str(tmp_path / "whole"), checkpoint_every=10)
    tx, state = _state()
    run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5, workdir=str(tmp_path / "cut"),
                 checkpoint_every=10, stop_after=10)
    tx, state = _state()  # a fresh process: the loop restores step 10 from the workdir
    resumed, metrics = run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5,
                                    workdir=str(tmp_path / "cut"), checkpoint_every=10)
    assert metrics["loss"].shape == (10,)  # only the remaining 10 steps ran
    assert int(resumed.step) == 20
    for a, b in zip(jax.tree_util.tree_leaves((whole.params, whole.model_state, whole.opt_state)),
                    jax.tree_util.tree_leaves((resumed.params, resumed.model_state, resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [r["step"] for r in read_metrics(str(tmp_path / "cut" / "metrics.jsonl"))]
    assert steps == [5, 10, 15, 20]


def test_guard_names_the_step_and_the_checkpoint(tmp_path):
    def exploding(params, key, batch, model_state):
        loss, aux = _stateful_loss(params, key, batch, model_state)
        return jnp.where(jnp.sum(model_state["seen"] != 0) > 0, jnp.nan, loss), aux

    tx, state = _state()
    with pytest.raises(FloatingPointError, match=r"^loss is nan at step 1; stopping without saving or logging this "
                                                 r"state. No checkpoint was written yet in "):
        run_loop.run(state, _make_step(tx, exploding), num_steps=10, steps_per_call=5,
                     workdir=str(tmp_path), checkpoint_every=5)


def test_steps_must_divide_into_calls():
    with pytest.raises(ValueError, match=r"train.num_steps \(12\) and train.checkpoint_every \(5\) must be "
                                         r"multiples of train.steps_per_call \(5\)"):
        run_loop.check_steps(12, 5, 5)


def test_ablation_keys_of_group_learning_rates():
    assert ablate.injected_name("optim.learning_rate") == "learning_rate"
    assert ablate.injected_name("optim.critic.learning_rate") == "critic.learning_rate"
    assert ablate.injected_name("optim.generator.weight_decay") == "generator.weight_decay"
    assert ablate.injected_name("optim.ema_decay") is None
    assert ablate.injected_name("model.learning_rate") is None
