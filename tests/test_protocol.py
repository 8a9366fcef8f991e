"""The trainer's protocol for families with several players or with state
(docs/protocol.md): parameter groups with their own losses and optimizers, an
update schedule, and model state threaded through the loss.

Most checks use plain SGD on linear losses, whose updates are known in closed
form, so counts and orderings are exact (small integers are exact in float32).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import train
from genjax.core import Model


def _counting_losses():
    """critic loss -c: each SGD(1) update adds exactly 1 to c. generator loss -c g:
    its update adds the critic's *current* c to g."""
    def critic(params, key, batch):
        return -params["critic"]["c"], {}

    def generator(params, key, batch):
        return -params["critic"]["c"] * params["generator"]["g"], {}

    return {"critic": critic, "generator": generator}


def _init(key, batch):
    return {"critic": {"c": jnp.float32(0.0)}, "generator": {"g": jnp.float32(0.0)}}


def _sgd_groups(lr_critic=1.0, lr_generator=1.0):
    return {"critic": optax.sgd(lr_critic), "generator": optax.sgd(lr_generator)}


def test_n_critic_updates_per_generator_update_in_order():
    # With (critic, 5), (generator, 1): after step s, c = 5 s and the generator saw
    # c = 5 s (the critic's updates of the same step): g = sum_k 5 k = 5 s (s + 1) / 2.
    tx = _sgd_groups()
    state = train.init_state(_init, tx, jax.random.key(0), None)
    fn = jax.jit(train.make_train_fn(_counting_losses(), tx, steps_per_call=4,
                                     batch_fn=lambda k, i: jnp.zeros(()),
                                     update_schedule=(("critic", 5), ("generator", 1))))
    state, metrics = fn(state)
    assert int(state.step) == 4
    assert float(state.params["critic"]["c"]) == 20.0
    assert float(state.params["generator"]["g"]) == 5.0 * 4 * 5 / 2
    # per-group metrics: the critic's loss is the mean over its 5 updates of the step
    np.testing.assert_array_equal(metrics["critic/loss"], -np.array([2.0, 7.0, 12.0, 17.0]))
    # the generator's loss -c g is taken after the step's critic updates: c = 5 (s + 1)
    s = np.arange(4)
    np.testing.assert_array_equal(metrics["generator/loss"], -5.0 * (s + 1) * 5.0 * s * (s + 1) / 2)
    np.testing.assert_array_equal(metrics["loss"], metrics["critic/loss"] + metrics["generator/loss"])


def test_a_zero_learning_rate_freezes_only_its_group():
    tx = {"critic": optax.inject_hyperparams(optax.sgd)(learning_rate=1.0),
          "generator": optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)}
    state = train.init_state(_init, tx, jax.random.key(0), None, **{"generator.learning_rate": 0.0})
    assert float(train.get_hyperparams(state.opt_state)["generator.learning_rate"]) == 0.0
    fn = jax.jit(train.make_train_fn(_counting_losses(), tx, steps_per_call=3,
                                     batch_fn=lambda k, i: jnp.zeros(()),
                                     update_schedule=(("critic", 2), ("generator", 1))))
    state, _ = fn(state)
    assert float(state.params["generator"]["g"]) == 0.0  # frozen
    assert float(state.params["critic"]["c"]) == 6.0  # trained: 2 updates x 3 steps


def test_each_group_clips_only_its_own_gradient():
    # critic gradient norm 1000, generator gradient norm 0.5; each clipped at 1 by
    # its own optimizer: the critic moves by 1, the generator by its full 0.5.
    def critic(params, key, batch):
        return -1000.0 * params["critic"]["c"], {}

    def generator(params, key, batch):
        return -0.5 * params["generator"]["g"], {}

    clip_sgd = lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))  # noqa: E731
    tx = {"critic": clip_sgd(), "generator": clip_sgd()}
    state = train.init_state(_init, tx, jax.random.key(0), None)
    fn = train.make_train_fn({"critic": critic, "generator": generator}, tx,
                             batch_fn=lambda k, i: jnp.zeros(()))
    state, metrics = jax.jit(fn)(state)
    np.testing.assert_allclose(float(state.params["critic"]["c"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(state.params["generator"]["g"]), 0.5, rtol=1e-6)
    np.testing.assert_allclose(metrics["critic/grad_norm"], [1000.0], rtol=1e-6)
    np.testing.assert_allclose(metrics["generator/grad_norm"], [0.5], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], [np.hypot(1000.0, 0.5)], rtol=1e-6)


def _recording_model(num_steps: int, updates_per_step: int):
    """A stateful loss that writes the batch index and a key-derived number of every
    update into its model state, in the order the updates run."""
    size = num_steps * updates_per_step

    def loss(params, key, batch, model_state):
        n = model_state["count"]
        model_state = {"count": n + 1,
                       "batches": model_state["batches"].at[n].set(batch),
                       "keys": model_state["keys"].at[n].set(jax.random.uniform(key))}
        return jnp.sum(params[_group_of(params)]["w"]) ** 2, ({}, model_state)

    def init_model_state(key, batch):
        return {"count": jnp.int32(0), "batches": -jnp.ones(size, jnp.int32), "keys": jnp.zeros(size)}

    return loss, init_model_state


def _group_of(params):
    return sorted(params)[0]


def test_each_update_has_its_own_batch_and_key_and_state_threads_through_all():
    steps, schedule = 3, (("critic", 2), ("generator", 1))
    loss, init_model_state = _recording_model(steps, 3)
    losses = {"critic": loss, "generator": loss}
    init = lambda k, b: {"critic": {"w": jnp.ones(2)}, "generator": {"w": jnp.ones(2)}}  # noqa: E731
    tx = _sgd_groups(0.1, 0.1)
    state = train.init_state(init, tx, jax.random.key(3), jnp.int32(0), init_model_state=init_model_state)
    fn = jax.jit(train.make_train_fn(losses, tx, steps_per_call=steps, update_schedule=schedule,
                                     batch_fn=lambda data_key, index: jnp.int32(index)))
    out, _ = fn(state)
    # batch index of update j of step s is 3 s + j, run in order
    np.testing.assert_array_equal(out.model_state["batches"], np.arange(9))
    assert int(out.model_state["count"]) == 9
    keys = np.asarray(out.model_state["keys"])
    assert len(set(keys.tolist())) == 9  # nine distinct keys
    # key of update j of step s: fold_in(step key of s, j)
    for s in range(steps):
        step_key = train.step_key(state._replace(step=jnp.int32(s)))
        for j in range(3):
            assert keys[3 * s + j] == float(jax.random.uniform(jax.random.fold_in(step_key, j)))
    # the model state is not decayed by the EMA nor touched by the optimizer
    assert not hasattr(out.ema_params, "model_state")


def test_model_state_threads_through_gradient_accumulation():
    loss, init_model_state = _recording_model(2, 1)

    def single(params, key, batch, model_state):
        value, (metrics, model_state) = loss({"p": params}, key, batch[0], model_state)
        return value, (metrics, model_state)

    tx = optax.sgd(0.1)
    for unroll in (1, True):
        # 2 steps x 4 micro-batches; micro-batch i of a step holds rows i, i + 4
        state = train.init_state(lambda k, b: {"w": jnp.ones(2)}, tx, jax.random.key(0), None,
                                 init_model_state=lambda k, b: {"count": jnp.int32(0),
                                                                "batches": -jnp.ones(8, jnp.int32),
                                                                "keys": jnp.zeros(8)})
        fn = jax.jit(train.make_train_fn(single, tx, steps_per_call=2, grad_accum_steps=4, unroll=unroll,
                                         batch_fn=lambda k, step: step * 8 + jnp.arange(8, dtype=jnp.int32)))
        out, _ = fn(state)
        assert int(out.model_state["count"]) == 8
        np.testing.assert_array_equal(out.model_state["batches"], [0, 1, 2, 3, 8, 9, 10, 11])


def test_ema_only_for_the_named_groups():
    tx = _sgd_groups()
    state = train.init_state(_init, tx, jax.random.key(0), None)
    warm = 0.5 ** (train.EMA_WARMUP_GAMMA + 1)  # the second update's decay, min(0.5, (1 - 1/2)^(gamma + 1))
    for warmup, expected in ((False, 1.75), (True, warm * 1 + (1 - warm) * 3)):
        fn = jax.jit(train.make_train_fn(_counting_losses(), tx, steps_per_call=2, ema_decay=0.5,
                                         batch_fn=lambda k, i: jnp.zeros(()), ema_groups=("generator",),
                                         ema_warmup=warmup))
        out, _ = fn(state)
        # critic: c = 1, 2 (not averaged); generator: g = 1, 3. EMA 0.5 from g0 = 0: 0.5, 1.75;
        # with the warmup the first update takes g = 1 itself
        assert float(out.ema_params["critic"]["c"]) == float(out.params["critic"]["c"]) == 2.0
        assert float(out.params["generator"]["g"]) == 3.0
        np.testing.assert_allclose(float(out.ema_params["generator"]["g"]), expected, rtol=1e-6)


def test_ensemble_over_group_learning_rates_equals_runs_alone():
    def critic(params, key, batch):
        x = batch
        return jnp.mean((x @ params["critic"]["w"] - params["generator"]["v"]) ** 2), {}

    def generator(params, key, batch):
        return jnp.mean((params["generator"]["v"] - jax.random.normal(key, ())) ** 2
                        + (batch @ params["critic"]["w"]) ** 2), {}

    def init(key, batch):
        k1, k2 = jax.random.split(key)
        return {"critic": {"w": jax.random.normal(k1, (3,))}, "generator": {"v": jax.random.normal(k2, ())}}

    tx = {g: train.make_optimizer(learning_rate=1e-2, total_steps=20, b1=0.5, b2=0.9)[0]
          for g in ("critic", "generator")}
    losses = {"critic": critic, "generator": generator}
    batch_fn = lambda k, i: jax.random.normal(jax.random.fold_in(k, i), (8, 3))  # noqa: E731
    fn = train.make_train_fn(losses, tx, steps_per_call=5, batch_fn=batch_fn,
                             update_schedule=(("critic", 3), ("generator", 1)))
    keys = jax.random.split(jax.random.key(7), 3)
    lrs = [1e-3, 1e-2, 3e-2]
    ens = train.init_ensemble(init, tx, keys, None, **{"critic.learning_rate": lrs})
    ens, ens_metrics = jax.jit(jax.vmap(fn))(ens)
    for k in range(3):
        alone = train.init_state(init, tx, keys[k], None, **{"critic.learning_rate": lrs[k]})
        alone, metrics = jax.jit(fn)(alone)
        member = jax.tree_util.tree_map(lambda x: x[k], ens)
        for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ens_metrics["critic/loss"][k], metrics["critic/loss"], rtol=1e-5)
    # different critic learning rates gave different critics
    w = ens.params["critic"]["w"]
    assert float(jnp.max(jnp.abs(w[0] - w[2]))) > 1e-3


def test_steps_per_call_and_host_loop_do_not_change_a_grouped_stateful_run():
    loss, init_model_state = _recording_model(6, 3)
    losses = {"critic": loss, "generator": loss}
    init = lambda k, b: {"critic": {"w": jnp.ones(2)}, "generator": {"w": jnp.ones(2)}}  # noqa: E731
    tx = _sgd_groups(0.01, 0.02)
    kwargs = dict(update_schedule=(("critic", 2), ("generator", 1)),
                  batch_fn=lambda data_key, index: jnp.int32(index))
    state0 = train.init_state(init, tx, jax.random.key(3), jnp.int32(0), init_model_state=init_model_state)
    six, _ = jax.jit(train.make_train_fn(losses, tx, steps_per_call=6, **kwargs))(state0)
    three = jax.jit(train.make_train_fn(losses, tx, steps_per_call=3, **kwargs))
    half, _ = three(state0)
    twice, _ = three(half)
    one = jax.jit(train.make_train_fn(losses, tx, steps_per_call=1, unroll=True, **kwargs))
    looped, _ = train.host_loop(one, 6)(state0)
    for other in (twice, looped):
        assert_trees_equal(six, other)


def assert_trees_equal(a, b):
    """Bit-identical pytrees (typed PRNG keys compared through their data)."""
    raw = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(raw(x)), np.asarray(raw(y)))


def test_bad_groups_are_named():
    tx = _sgd_groups()
    with pytest.raises(ValueError, match=r"update_schedule names group 'critc'; valid groups: \['critic', 'generator'\]"):
        train.make_train_fn(_counting_losses(), tx, update_schedule=(("critc", 5), ("generator", 1)))
    with pytest.raises(ValueError, match=r"groups \['critic'\] have a loss but no place"):
        train.make_train_fn(_counting_losses(), tx, update_schedule=(("generator", 1),))
    with pytest.raises(ValueError, match=r"update count of group 'critic' must be a Python int >= 1, got 0"):
        train.make_train_fn(_counting_losses(), tx, update_schedule=(("critic", 0), ("generator", 1)))
    with pytest.raises(ValueError, match=r"optimizer must be a dict with one entry per parameter group"):
        train.make_train_fn(_counting_losses(), optax.sgd(1.0))
    with pytest.raises(ValueError, match=r"ema group 'gen' is not a parameter group"):
        train.make_train_fn(_counting_losses(), tx, ema_groups=("gen",))
    with pytest.raises(ValueError, match=r"unknown optimizer hyperparameter\(s\) \['learning_rate'\]; "
                                         r"valid: \['critic.learning_rate'"):
        inj = {g: optax.inject_hyperparams(optax.sgd)(learning_rate=1.0) for g in ("critic", "generator")}
        train.init_state(_init, inj, jax.random.key(0), None, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"params must be a dict of the parameter groups \['critic', 'generator'\]"):
        train.init_state(lambda k, b: {"w": jnp.zeros(1)}, tx, jax.random.key(0), None)


def test_model_groups_property():
    losses = _counting_losses()
    assert Model(_init, losses, None).groups == ("critic", "generator")
    assert Model(_init, losses, None, update_schedule=(("generator", 1), ("critic", 5))).groups == ("generator", "critic")
    assert Model(_init, lambda p, k, b: (0.0, {}), None).groups == ()
