"""Tests of the routed mixture-of-experts MLP (genjax/nn/moe.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from genjax.nn import moe

B, T, D, F = 2, 8, 16, 32


def _x(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, T, D))


def _dense_mlp(x_BTD, w_in_DF, b_in_F, w_out_FD, b_out_D):
    h = jax.nn.gelu(x_BTD @ w_in_DF + b_in_F, approximate=True)
    return h @ w_out_FD + b_out_D


def _init(layer, x, seed=1):
    return layer.init(jax.random.key(seed), x)


def _same_experts(params):
    """Every expert gets expert 0's weights."""
    inner = dict(params["params"])
    for name in moe.EXPERT_PARAMS:
        inner[name] = jnp.broadcast_to(inner[name][:1], inner[name].shape)
    return {"params": inner}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dropless", [False, True])
def test_identical_experts_equal_dense_mlp(k, dropless):
    E = 4
    x = _x()
    layer = moe.MoEMLP(E, k, F, capacity_factor=float(E), dropless=dropless)
    params = _same_experts(_init(layer, x))
    # Non-zero biases so that they are checked too.
    params["params"]["b_in_EF"] = params["params"]["b_in_EF"] + 0.1
    params["params"]["b_out_ED"] = params["params"]["b_out_ED"] - 0.2
    y, aux = layer.apply(params, x)
    p = params["params"]
    want = _dense_mlp(x, p["w_in_EDF"][0], p["b_in_EF"][0], p["w_out_EFD"][0], p["b_out_ED"][0])
    np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-5)
    assert float(aux["dropped_fraction"]) == 0.0


def test_chosen_gates_sum_to_one():
    logits = jax.random.normal(jax.random.key(0), (50, 8)) * 3
    for k in (1, 2, 3):
        probs, gates, experts = moe.route(logits, k)
        np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
        assert experts.shape == (50, k)
        # The chosen experts are the k most probable, most probable first.
        np.testing.assert_array_equal(experts[:, 0], jnp.argmax(probs, -1))
    _, raw, _ = moe.route(logits, 1, normalize_gates=False)
    np.testing.assert_allclose(raw[:, 0], jax.nn.softmax(logits).max(-1), rtol=1e-6)


def test_balancing_loss_one_at_uniform_routing_larger_when_skewed():
    E = 4
    x = _x()
    layer = moe.MoEMLP(E, 2, F)
    params = _init(layer, x)
    params["params"]["router"] = jnp.zeros((D, E))
    _, aux = layer.apply(params, x)
    assert float(aux["load_balancing_loss"]) == pytest.approx(1.0, abs=1e-6)
    # Skewed: expert 0 wins for positive inputs.
    router = jnp.zeros((D, E)).at[:, 0].set(1.0)
    params["params"]["router"] = router
    _, aux = layer.apply(params, jnp.abs(x))
    assert float(aux["load_balancing_loss"]) > 1.5
    # Random routing is between the two.
    params = _init(layer, x)
    params["params"]["router"] = jax.random.normal(jax.random.key(3), (D, E))
    _, aux = layer.apply(params, x)
    assert float(aux["load_balancing_loss"]) >= 1.0
    np.testing.assert_allclose(aux["load_E"].sum(), 1.0, rtol=1e-6)


def test_router_z_loss_by_hand():
    logits = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    want = np.mean([np.log(np.exp(row).sum()) ** 2 for row in logits])
    assert float(moe.router_z_loss(jnp.asarray(logits))) == pytest.approx(want, rel=1e-6)


def test_capacity_drop_accounting_by_hand():
    # 5 tokens, 2 experts, top-1: tokens 0,1,2,3 choose expert 0, token 4 expert 1.
    experts = jnp.array([[0], [0], [0], [0], [1]])
    gates = jnp.ones((5, 1))
    capacity = moe.expert_capacity(5, 2, 1, 1.0)
    assert capacity == 3  # ceil(1.0 * 1 * 5 / 2)
    dispatch, combine, dropped = moe.capacity_dispatch(gates, experts, 2, capacity)
    assert float(dropped) == pytest.approx(1 / 5)
    # Tokens 0..2 fill expert 0's slots 0..2 in order; token 3 is dropped.
    for n in range(3):
        assert float(dispatch[n, 0, n]) == 1.0
    assert float(dispatch[3].sum()) == 0.0
    assert float(dispatch[4, 1, 0]) == 1.0
    np.testing.assert_array_equal(dispatch, combine)
    # Top-2: first choices are served before any second choice.
    experts2 = jnp.array([[1, 0], [0, 1], [0, 1]])
    gates2 = jnp.full((3, 2), 0.5)
    dispatch2, _, dropped2 = moe.capacity_dispatch(gates2, experts2, 2, 2)
    # Expert 0: first choices of tokens 1, 2 take both slots; token 0's second choice drops.
    # Expert 1: token 0 (first choice) slot 0, token 1 (second) slot 1; token 2's second drops.
    assert float(dropped2) == pytest.approx(2 / 6)
    assert float(dispatch2[0, 0].sum()) == 0.0 and float(dispatch2[0, 1, 0]) == 1.0
    assert float(dispatch2[1, 0, 0]) == 1.0 and float(dispatch2[1, 1, 1]) == 1.0
    assert float(dispatch2[2, 0, 1]) == 1.0 and float(dispatch2[2, 1].sum()) == 0.0


def test_dropped_tokens_get_zero_output_and_pass_through_residual():
    E = 4
    x = jnp.abs(_x())
    layer = moe.MoEMLP(E, 1, F, capacity_factor=1.0)
    params = _init(layer, x)
    params["params"]["router"] = jnp.zeros((D, E)).at[:, 0].set(1.0)  # all to expert 0
    y, aux = layer.apply(params, x)
    capacity = moe.expert_capacity(B * T, E, 1, 1.0)  # 4 of the 16 tokens fit
    y_ND = y.reshape(B * T, D)
    assert float(aux["dropped_fraction"]) == pytest.approx(1 - capacity / (B * T))
    assert float(jnp.abs(y_ND[capacity:]).max()) == 0.0
    assert float(jnp.abs(y_ND[:capacity]).min(axis=-1).max()) > 0.0
    residual_ND = (x + y).reshape(B * T, D)
    np.testing.assert_array_equal(residual_ND[capacity:], x.reshape(B * T, D)[capacity:])


@pytest.mark.parametrize("k", [1, 2])
def test_dropless_equals_capacity_path_when_nothing_drops(k):
    E = 4
    x = _x()
    capacity_layer = moe.MoEMLP(E, k, F, capacity_factor=float(E))
    dropless_layer = moe.MoEMLP(E, k, F, dropless=True)
    params = _init(capacity_layer, x)
    params["params"]["router"] = params["params"]["router"] * 50  # uneven loads

    def loss(layer):
        def f(p):
            y, aux = layer.apply(p, x)
            return jnp.sum(y ** 2) + aux["load_balancing_loss"] + aux["router_z_loss"], (y, aux)
        return jax.value_and_grad(f, has_aux=True)(params)

    (lc, (yc, auxc)), gc = loss(capacity_layer)
    (ld, (yd, auxd)), gd = loss(dropless_layer)
    assert float(auxc["dropped_fraction"]) == 0.0
    np.testing.assert_allclose(yd, yc, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(auxd["load_E"], auxc["load_E"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), gd, gc)


def test_bad_experts_per_token():
    with pytest.raises(ValueError, match="experts_per_token=5.*num_experts=4"):
        moe.MoEMLP(4, 5, F).init(jax.random.key(0), _x())


@pytest.mark.parametrize("dropless", [False, True])
def test_expert_parallel_equals_unsharded(eight_devices, dropless):
    E = 8
    x = jax.random.normal(jax.random.key(0), (8, T, D))
    layer = moe.MoEMLP(E, 2, F, capacity_factor=1.0, dropless=dropless)
    params = _init(layer, x)

    def loss(p, x):
        y, aux = layer.apply(p, x)
        return jnp.mean(y ** 2) + 0.01 * aux["load_balancing_loss"] + 1e-3 * aux["router_z_loss"]

    step = jax.jit(jax.value_and_grad(loss))
    want_loss, want_grad = step(params, x)
    mesh = jax.make_mesh((2, 4), ("data", "expert"), axis_types=(AxisType.Auto,) * 2,
                         devices=eight_devices)
    shardings = moe.expert_parallel_shardings(params, mesh)
    assert shardings["params"]["w_in_EDF"].spec == jax.sharding.PartitionSpec("expert")
    sharded_params = jax.device_put(params, shardings)
    sharded_x = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    got_loss, got_grad = step(sharded_params, sharded_x)
    assert len(got_grad["params"]["w_in_EDF"].sharding.device_set) == 8
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), got_grad, want_grad)


def test_expert_axis_must_divide_num_experts(eight_devices):
    mesh = jax.make_mesh((8,), ("expert",), axis_types=(AxisType.Auto,), devices=eight_devices)
    params = _init(moe.MoEMLP(4, 1, F), _x())
    with pytest.raises(ValueError, match="size 8 does not divide num_experts=4"):
        moe.expert_parallel_shardings(params, mesh)


def test_transformer_default_stays_dense_and_moe_lm_trains():
    import optax
    from genjax.autoregressive.lm import make_lm

    tokens = jax.random.randint(jax.random.key(0), (4, 17), 0, 32)
    batch = {"tokens": tokens}
    dense = make_lm(vocab_size=32, num_layers=2, d_model=16, num_heads=2, max_len=16)
    dense_block = dense.init(jax.random.key(1), batch)["block_0"]
    assert "fc" in dense_block and "proj" in dense_block and "moe" not in dense_block
    _, dense_metrics = dense.loss(dense.init(jax.random.key(1), batch), jax.random.key(2), batch)
    assert not any(name.startswith("moe_") for name in dense_metrics)

    lm = make_lm(vocab_size=32, num_layers=2, d_model=16, num_heads=2, max_len=16,
                 num_experts=4, experts_per_token=2)
    params = lm.init(jax.random.key(1), batch)
    assert "moe" in params["block_0"] and "fc" not in params["block_0"]
    assert params["block_0"]["moe"]["w_in_EDF"].shape == (4, 16, 64)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, metrics), grads = jax.value_and_grad(lm.loss, has_aux=True)(params, jax.random.key(2), batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    params, opt_state, first, metrics = step(params, opt_state)
    want = (metrics["nats_per_token"] + 0.01 * metrics["moe_load_balancing_loss"]
            + 1e-3 * metrics["moe_router_z_loss"])
    np.testing.assert_allclose(first, want, rtol=1e-6)
    assert 1.0 <= float(metrics["moe_max_load"]) <= 4.0
    for _ in range(10):
        params, opt_state, loss, metrics = step(params, opt_state)
    assert float(loss) < float(first)
    samples = lm.sample(params, jax.random.key(3), 2, max_new_tokens=4)
    assert samples.shape == (2, 5)
    with pytest.raises(ValueError, match="experts_per_token=3 must be between 1 and num_experts=2"):
        make_lm(vocab_size=32, num_experts=2, experts_per_token=3).init(jax.random.key(0), batch)
