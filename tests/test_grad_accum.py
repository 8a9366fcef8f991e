"""Gradient accumulation in `train.make_train_fn`: the mean of micro-batch gradients
is the full-batch gradient, so the step equals the full-batch step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import train
from genjax.autoregressive import make_lm


def _least_squares_loss(params, key, batch):
    del key
    r = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(r**2), {"abs_residual": jnp.mean(jnp.abs(r))}


def test_accumulated_sgd_step_is_the_closed_form_full_batch_step():
    # loss = mean_i (x_i.w - y_i)^2 has gradient (2 / B) X^T (X w - y); one SGD
    # step with rate 1 moves w by exactly minus that.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.standard_normal(12).astype(np.float32)
    w0 = rng.standard_normal(3).astype(np.float32)
    batch = {"x": jnp.asarray(X), "y": jnp.asarray(y)}
    want = w0 - 2.0 / 12 * X.T @ (X @ w0 - y)
    want_loss = np.mean((X @ w0 - y) ** 2)
    tx = optax.sgd(1.0)
    for unroll, accum in ((1, 1), (1, 3), (True, 4)):
        state = train.init_state(lambda k, b: {"w": jnp.asarray(w0)}, tx, jax.random.key(0), batch)
        fn = jax.jit(train.make_train_fn(_least_squares_loss, tx, grad_accum_steps=accum, unroll=unroll))
        state, metrics = fn(state, jax.tree_util.tree_map(lambda x: x[None], batch))
        np.testing.assert_allclose(state.params["w"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["loss"][0], want_loss, rtol=1e-5)
        np.testing.assert_allclose(
            metrics["abs_residual"][0], np.mean(np.abs(X @ w0 - y)), rtol=1e-5)


def test_accumulated_lm_training_equals_full_batch_training():
    lm = make_lm(vocab_size=16, num_layers=1, d_model=16, num_heads=2, max_len=8)
    # Plain SGD: Adam's g / sqrt(v) would magnify float rounding in near-zero
    # gradient entries into visible parameter differences.
    tx = optax.sgd(0.5)
    tokens = jax.random.randint(jax.random.key(1), (2, 8, 9), 0, 16)  # 2 steps of batch 8
    batches = {"tokens": tokens}
    state0 = train.init_state(lm.init, tx, jax.random.key(2), {"tokens": tokens[0]})
    runs = {}
    for accum in (1, 4):  # both scanned: two steps, and the micro-batches
        fn = jax.jit(train.make_train_fn(lm.loss, tx, steps_per_call=2, grad_accum_steps=accum))
        runs[accum] = fn(state0, batches)
    (a, ma), (b, mb) = runs[1], runs[4]
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    np.testing.assert_allclose(ma["grad_norm"], mb["grad_norm"], rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # Training moved the parameters, so the comparison above is not vacuous.
    moved = jax.tree_util.tree_map(lambda p, q: jnp.max(jnp.abs(p - q)), a.params, state0.params)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-2


def test_bad_accumulation_settings_raise():
    tx = optax.sgd(1.0)
    with pytest.raises(ValueError, match="grad_accum_steps=0; expected a positive integer"):
        train.make_train_fn(_least_squares_loss, tx, grad_accum_steps=0)
    fn = train.make_train_fn(_least_squares_loss, tx, grad_accum_steps=5)
    batch = {"x": jnp.zeros((1, 12, 3)), "y": jnp.zeros((1, 12))}
    state = train.init_state(lambda k, b: {"w": jnp.zeros(3)}, tx, jax.random.key(0), batch)
    with pytest.raises(ValueError, match=r"shape \(12, 3\) does not split into grad_accum_steps=5"):
        fn(state, batch)
