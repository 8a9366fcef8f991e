"""Tests for genjax.flows.cnf: FFJORD log-likelihoods against closed forms, and training.

For the affine, time-dependent field f(x, t) = A x + t b the flow from z at t = 0
is x = e^A z + c with c = int_0^1 e^{A(1-s)} s b ds = A^{-2}(e^A - I - A) b, and
div f = tr(A), so log p_1(x) = log N(e^{-A}(x - c)) - tr(A). The shift's weight
s (not 1 - s) makes the answer depend on the direction of time.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import pytest

from genjax import integrate, train
from genjax.flows import cnf
from genjax.nn.mlp import TimeMLP

DIM = 3


class AffineField(nn.Module):
    """f(x, t) = A x + t b."""

    dim: int

    @nn.compact
    def __call__(self, x_ND, t_N):
        a = self.param("A", nn.initializers.normal(0.5), (self.dim, self.dim))
        b = self.param("b", nn.initializers.normal(1.0), (self.dim,))
        return x_ND @ a.T + t_N[:, None] * b


def std_normal_log_prob(z):
    return -0.5 * jnp.sum(z**2, axis=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def latent_of(params, x):
    a, b = params["params"]["A"], params["params"]["b"]
    exp_a = jax.scipy.linalg.expm(a)
    a_inv = jnp.linalg.inv(a)
    c = a_inv @ a_inv @ (exp_a - jnp.eye(DIM) - a) @ b
    return (x - c) @ jax.scipy.linalg.expm(-a).T


def analytic_log_prob(params, x):
    return std_normal_log_prob(latent_of(params, x)) - jnp.trace(params["params"]["A"])


@pytest.fixture(scope="module")
def affine_setup():
    model = cnf.make_cnf_model(AffineField(DIM), data_shape=(DIM,))
    x = jax.random.normal(jax.random.PRNGKey(0), (8, DIM))
    params = model.init(jax.random.PRNGKey(1), x)
    return model, params, x


def test_exact_log_prob_of_an_affine_field_is_the_change_of_variables(affine_setup):
    model, params, x = affine_setup
    logp = jax.jit(model.log_prob)(params, jax.random.PRNGKey(2), x)
    # Adaptive solve at rtol = atol = 1e-5; 1e-4 nats leaves a margin for float32.
    np.testing.assert_allclose(logp, analytic_log_prob(params, x), atol=1e-4)


def test_hutchinson_estimate_uses_its_probes_exactly(affine_setup):
    # For a linear field v^T A v is constant along the path, so with the probes
    # fixed over the solve the estimate is log N(z) - v^T A v exactly.
    model, params, x = affine_setup
    key = jax.random.PRNGKey(3)
    logp = jax.jit(lambda p, k, x: model.log_prob(p, k, x, exact_divergence=False))(params, key, x)
    v = integrate.hutchinson_probes(key, x, 1, "rademacher")[0]
    quad = jnp.einsum("nd,de,ne->n", v, params["params"]["A"], v)
    np.testing.assert_allclose(logp, std_normal_log_prob(latent_of(params, x)) - quad, atol=1e-4)
    assert np.max(np.abs(quad - jnp.trace(params["params"]["A"]))) > 1e-2  # the probes matter


def test_training_loss_is_the_fixed_step_nll(affine_setup):
    # The training loss uses rk4 with 8 steps: within rk4's error of the exact NLL
    # (the local error of e^{hA} is ~ (h |A|)^5 / 120 per step, far below 1e-3 here).
    model, params, x = affine_setup
    value, metrics = jax.jit(model.loss)(params, jax.random.PRNGKey(4), x)
    exact_nll = -jnp.mean(analytic_log_prob(params, x))
    assert abs(float(value) - float(exact_nll)) < 1e-3
    assert float(metrics["bits_per_dim"]) == pytest.approx(float(value) / (DIM * math.log(2)), rel=1e-6)
    assert int(metrics["nfe"]) == 8 * 4


def test_sample_solves_from_the_base():
    model = cnf.make_cnf_model(AffineField(DIM), data_shape=(DIM,), eval_method="rk4", eval_num_steps=16)
    params = model.init(jax.random.PRNGKey(5), jnp.zeros((2, DIM)))
    key = jax.random.PRNGKey(6)
    x = model.sample(params, key, 5)
    z = jax.random.normal(key, (5, DIM))  # the base draw `sample` makes from `key`
    np.testing.assert_allclose(latent_of(params, x), z, atol=1e-4)


def test_training_reduces_nll_and_shapes_are_checked():
    mu = jnp.array([1.0, -0.5])
    s_half = jnp.array([[1.0, 0.3], [0.3, 0.6]])
    model = cnf.make_cnf_model(TimeMLP(hidden=(16,), time_dim=8), data_shape=(2,), train_num_steps=4)
    steps = 40
    optimizer, _ = train.make_optimizer(learning_rate=1e-2, total_steps=steps)

    def batch_fn(key, step):
        return mu + jax.random.normal(jax.random.fold_in(key, step), (64, 2)) @ s_half

    state = jax.jit(lambda k, x: train.init_state(model.init, optimizer, k, x))(
        jax.random.PRNGKey(7), batch_fn(jax.random.PRNGKey(0), 0))
    eval_x = batch_fn(jax.random.PRNGKey(8), 0)
    nll = jax.jit(lambda p: model.loss(p, jax.random.PRNGKey(9), eval_x)[0])
    before = nll(state.params)
    train_fn = jax.jit(train.make_train_fn(model.loss, optimizer, steps_per_call=steps, batch_fn=batch_fn))
    state, metrics = train_fn(state)
    after = nll(state.params)
    assert np.all(np.isfinite(metrics["loss"]))
    # The zero-initialised net is the base N(0, I); the best Gaussian has NLL equal
    # to the entropy log(2 pi e) + log|det S^{1/2}|. Training must close a quarter of the gap.
    entropy = math.log(2 * math.pi * math.e) + float(jnp.linalg.slogdet(s_half)[1])
    assert after < before - 0.25 * (before - entropy)

    bad = jnp.zeros((4, 3))
    for call in (lambda: model.init(jax.random.PRNGKey(0), bad),
                 lambda: model.loss(state.params, jax.random.PRNGKey(0), bad),
                 lambda: model.log_prob(state.params, jax.random.PRNGKey(0), bad)):
        with pytest.raises(ValueError, match=r"\(2,\).*\(4, 3\)"):
            call()


def test_regularizers_of_an_affine_field_match_closed_forms(affine_setup):
    # f(x, t) = A x + t b has Jacobian A everywhere, so int_0^1 ||J||_F^2 dt = ||A||_F^2
    # exactly. With A = 0 the trajectory is x_t = x - (1 - t^2) b / 2 and
    # int_0^1 ||f||^2 dt = int t^2 ||b||^2 dt = ||b||^2 / 3.
    _, params, x = affine_setup
    a, b = params["params"]["A"], params["params"]["b"]

    def run(a_matrix, **kw):
        field = cnf.vector_field(lambda y, t: AffineField(DIM).apply({"params": {"A": a_matrix, "b": b}}, y, t))
        return integrate.ode_log_likelihood_and_regularizers(
            jax.random.PRNGKey(0), field, x, 1.0, 0.0, std_normal_log_prob, method="rk4", num_steps=32, **kw)

    logp, _, _, _, frob = run(a)
    np.testing.assert_allclose(logp, analytic_log_prob(params, x), atol=1e-4)
    np.testing.assert_allclose(frob, jnp.sum(a**2), rtol=1e-5)
    # Hutchinson: E ||J v||^2 = ||A||_F^2; 4096 Rademacher probes -> std error ~2%.
    _, _, _, _, frob_est = run(a, exact_divergence=False, num_probes=4096)
    np.testing.assert_allclose(frob_est, jnp.sum(a**2), rtol=0.1)
    _, _, _, kinetic, frob0 = run(jnp.zeros_like(a))
    np.testing.assert_allclose(kinetic, jnp.sum(b**2) / 3, rtol=1e-5)
    np.testing.assert_allclose(frob0, 0.0, atol=1e-7)


def test_regularized_loss_adds_the_weighted_penalties(affine_setup):
    _, params, x = affine_setup
    plain = cnf.make_cnf_model(AffineField(DIM), data_shape=(DIM,))
    reg = cnf.make_cnf_model(AffineField(DIM), data_shape=(DIM,), kinetic_weight=0.1, jacobian_weight=0.2)
    key = jax.random.PRNGKey(4)
    plain_value, _ = plain.loss(params, key, x)
    value, metrics = reg.loss(params, key, x)
    np.testing.assert_allclose(metrics["nll"], plain_value, rtol=1e-6)
    np.testing.assert_allclose(metrics["jacobian_frobenius"], jnp.sum(params["params"]["A"] ** 2), rtol=1e-5)
    expected = plain_value + 0.1 * metrics["kinetic"] + 0.2 * metrics["jacobian_frobenius"]
    np.testing.assert_allclose(value, expected, rtol=1e-6)
