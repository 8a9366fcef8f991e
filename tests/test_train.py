"""The shared trainer: ensembles, determinism, sharding, schedules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import train
from genjax.data import toy2d
from genjax.diffusion import model as diffusion_model
from genjax.diffusion import sde as sde_lib
from genjax.nn.mlp import TimeMLP

BATCH = 64
DENSITY = toy2d.eight_gaussians()


def _model():
    return diffusion_model.make_score_model(sde_lib.VPSDE(), TimeMLP(hidden=(32, 32)), data_shape=(2,))


def _batch_fn(data_key, step):
    return DENSITY.sample(jax.random.fold_in(data_key, step), BATCH)


def _tx(total=40):
    return train.make_optimizer(learning_rate=1e-3, total_steps=total, warmup_steps=5)


def test_ensemble_members_equal_runs_trained_alone():
    model = _model()
    tx, lr_fn = _tx()
    example = DENSITY.sample(jax.random.PRNGKey(0), BATCH)
    seeds = [jax.random.PRNGKey(1), jax.random.PRNGKey(2)]
    lrs = [1e-3, 3e-3]
    members = [(s, lr) for s in seeds for lr in lrs]  # 2 seeds x 2 learning rates
    train_fn = train.make_train_fn(model.loss, tx, steps_per_call=20, batch_fn=_batch_fn, learning_rate_fn=lr_fn)

    ensemble = train.init_ensemble(model.init, tx, jnp.stack([m[0] for m in members]), example,
                                   learning_rate=[m[1] for m in members])
    run_ensemble = jax.jit(jax.vmap(train_fn))
    for _ in range(2):
        ensemble, ens_metrics = run_ensemble(ensemble)

    run_one = jax.jit(train_fn)
    for k, (seed, lr) in enumerate(members):
        state = train.init_state(model.init, tx, seed, example, learning_rate=lr)
        for _ in range(2):
            state, metrics = run_one(state)
        member = jax.tree_util.tree_map(lambda leaf: leaf[k], ensemble)
        np.testing.assert_allclose(ens_metrics["loss"][k], metrics["loss"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ens_metrics["learning_rate"][k], metrics["learning_rate"], rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The members really differ: different seeds and learning rates give different params.
    p = ensemble.params["params"]["Dense_1"]["kernel"]
    assert float(jnp.max(jnp.abs(p[0] - p[1]))) > 1e-4
    assert float(jnp.max(jnp.abs(p[0] - p[2]))) > 1e-4


def test_sharded_over_eight_devices_equals_one_device(eight_devices):
    model = _model()
    tx, _ = _tx()
    example = DENSITY.sample(jax.random.PRNGKey(0), BATCH)
    state0 = train.init_state(model.init, tx, jax.random.PRNGKey(3), example)
    losses = {}
    for n in (1, 8):
        mesh = train.default_mesh(eight_devices[:n])
        fn = jax.jit(train.make_train_fn(model.loss, tx, steps_per_call=10, batch_fn=_batch_fn, mesh=mesh))
        state, metrics = fn(state0)
        losses[n] = np.asarray(metrics["loss"])
        if n == 8:
            # The batch really is split: every device holds one eighth of it.
            batch = jax.device_put(example, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
            assert len(batch.sharding.device_set) == 8
    np.testing.assert_allclose(losses[1], losses[8], rtol=1e-5)


def test_steps_per_call_does_not_change_the_run():
    """Ten scanned steps in one call equal ten calls of one step, scanned or traced
    without a loop (`host_loop`), with the same RNG and data."""
    model = _model()
    tx, _ = _tx()
    example = DENSITY.sample(jax.random.PRNGKey(0), BATCH)
    state0 = train.init_state(model.init, tx, jax.random.PRNGKey(4), example)
    many = jax.jit(train.make_train_fn(model.loss, tx, steps_per_call=10, batch_fn=_batch_fn))
    one = jax.jit(train.make_train_fn(model.loss, tx, steps_per_call=1, batch_fn=_batch_fn))
    a, _ = many(state0)
    b = state0
    for _ in range(10):
        b, _ = one(b)
    unrolled = jax.jit(train.make_train_fn(model.loss, tx, steps_per_call=1, batch_fn=_batch_fn, unroll=True))
    c, metrics = train.host_loop(unrolled, 10)(state0)
    assert int(a.step) == int(b.step) == int(c.step) == 10 and metrics["loss"].shape == (10,)
    for x, y, z in zip(*(jax.tree_util.tree_leaves(s.params) for s in (a, b, c))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(x, z, rtol=1e-5, atol=1e-7)


def test_host_fed_batches():
    model = _model()
    tx, _ = _tx()
    example = DENSITY.sample(jax.random.PRNGKey(0), BATCH)
    state = train.init_state(model.init, tx, jax.random.PRNGKey(5), example)
    fn = jax.jit(train.make_train_fn(model.loss, tx, steps_per_call=3))
    batches = jnp.stack([DENSITY.sample(jax.random.PRNGKey(i), BATCH) for i in range(3)])
    state, metrics = fn(state, batches)
    assert metrics["loss"].shape == (3,) and int(state.step) == 3
    with pytest.raises(ValueError, match="needs `batches`"):
        fn(state)


def test_schedule_warmup_then_cosine():
    tx, lr_fn = train.make_optimizer(learning_rate=2.0, total_steps=110, warmup_steps=10)
    params = {"w": jnp.zeros(3)}
    opt_state = tx.init(params)
    lrs = []
    for _ in range(110):
        lrs.append(float(lr_fn(opt_state)))
        _, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params)
    np.testing.assert_allclose(lrs[:11], 2.0 * np.arange(11) / 10, rtol=1e-6, atol=1e-7)
    # Cosine: halfway through the decay the multiplier is exactly 1/2.
    np.testing.assert_allclose(lrs[60], 1.0, rtol=1e-5)
    assert lrs[-1] < 1e-3


def test_set_hyperparams_rejects_unknown_names():
    tx, _ = _tx()
    opt_state = tx.init({"w": jnp.zeros(2)})
    new = train.set_hyperparams(opt_state, learning_rate=0.5)
    assert float(train.get_hyperparams(new)["learning_rate"]) == 0.5
    with pytest.raises(ValueError, match=r"unknown optimizer hyperparameter\(s\) \['lr'\]; valid: .*learning_rate"):
        train.set_hyperparams(opt_state, lr=0.5)


def test_wrong_data_shape_is_named():
    model = _model()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"batch has shape \(4, 3\); expected \('N', 2\)"):
        model.loss(params, jax.random.PRNGKey(0), jnp.zeros((4, 3)))


def test_first_nonfinite_names_the_step():
    assert train.first_nonfinite(np.array([1.0, 2.0]), 10) is None
    assert train.first_nonfinite(np.array([1.0, np.nan, np.inf]), 10) == 11


@pytest.mark.parametrize("strategy", ["map", "loop", "auto"])
def test_ensemble_strategies_agree_with_vmap(strategy):
    from experiments.ensemble import ensemble_runner

    model = _model()
    tx, _ = _tx()
    example = DENSITY.sample(jax.random.PRNGKey(0), BATCH)
    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    states = train.init_ensemble(model.init, tx, keys, example, learning_rate=[1e-3, 2e-3, 3e-3])
    train_fn = train.make_train_fn(model.loss, tx, steps_per_call=5, batch_fn=_batch_fn)
    reference, _ = train.make_ensemble_fn(train_fn, "vmap")(states)
    run, chosen, timings = ensemble_runner(train_fn, states, strategy=strategy)
    assert chosen in train.ENSEMBLE_STRATEGIES
    if strategy == "auto" and jax.default_backend() == "cpu":
        assert set(timings) == set(train.ENSEMBLE_STRATEGIES) and chosen == min(timings, key=timings.get)
    out, _ = run(states)
    for a, b in zip(jax.tree_util.tree_leaves(out.params), jax.tree_util.tree_leaves(reference.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown ensemble strategy 'pmap'"):
        train.make_ensemble_fn(train_fn, "pmap")


def _ema_after(values, decay, warmup=True):
    """The EMA a train step keeps of a parameter that takes `values` (one per step):
    an SGD(1) step on loss -v*p adds v, so p_t = p_0 + v_1 + ... + v_t; the values are
    chosen so that p_t is values[t - 1]."""
    values = jnp.asarray(values, jnp.float32)
    increments = jnp.diff(values, prepend=0.0)
    tx = optax.sgd(1.0)
    state = train.init_state(lambda k, b: {"p": jnp.zeros(())}, tx, jax.random.key(0), None)
    loss = lambda params, key, step: (-increments[step] * params["p"], {})  # noqa: E731
    fn = jax.jit(train.make_train_fn(loss, tx, steps_per_call=len(values), ema_decay=decay,
                                     batch_fn=lambda k, i: i, ema_warmup=warmup))
    out, _ = fn(state)
    np.testing.assert_allclose(float(out.params["p"]), float(values[-1]), rtol=1e-5, atol=1e-5)  # float32 sums
    return float(out.ema_params["p"])


def test_warmed_up_ema_of_a_constant_is_the_constant_from_the_first_step():
    # the initial parameter (0) gets no weight: after one step the EMA is the value itself
    for t in (1, 2, 10):
        assert _ema_after([3.0] * t, 0.999) == pytest.approx(3.0, rel=1e-5)
    # a plain EMA after 10 steps at decay 0.999 is still 99% the initial 0: d^t p_0 + (1 - d^t) c
    assert _ema_after([3.0] * 10, 0.999, warmup=False) == pytest.approx(3.0 * (1 - 0.999**10), rel=1e-4)


def test_ema_decay_follows_the_power_profile_then_the_configured_decay():
    gamma = train.EMA_WARMUP_GAMMA
    # Karras et al. 2024: beta(t) = (1 - 1/t)^(gamma + 1) while below the configured decay
    for t in (1, 2, 10, 100):
        assert float(train.ema_decay_at(0.999, t)) == pytest.approx((1 - 1 / t) ** (gamma + 1), rel=1e-5, abs=1e-12)
    assert float(train.ema_decay_at(0.9, 10_000)) == pytest.approx(0.9, rel=1e-6)
    # the EMA of a ramp p_t = t lags by about 1 / (1 - d_t) - 1 steps: at t = 1000 and decay 0.9
    # the warmup is over (d = 0.9), so the lag is d / (1 - d) = 9 up to the ramp's start (d^1000 ~ 0)
    ramp = np.arange(1, 1001, dtype=np.float32)
    assert _ema_after(ramp, 0.9) == pytest.approx(1000 - 9, abs=0.05)
