"""Tests for flow matching (genjax.flows.paths, ot_coupling, ode, matching and the
reflow pieces of rectified) against a Gaussian target with a closed-form flow.

For data x1 ~ N(mu, S) (S = Q diag(lam) Q^T), noise x0 ~ N(0, I) and the
conditional-OT path x_t = t x1 + (1 - t) x0, the pair (x_t, u = x1 - x0) is
jointly Gaussian, so the marginal velocity is the linear regression

    v(x, t) = E[u | x_t = x] = mu + C_t V_t^{-1} (x - t mu),
    C_t = Cov(u, x_t) = t S - (1 - t) I,   V_t = Cov(x_t) = t^2 S + (1 - t)^2 I.

In the eigenbasis the ODE is dy/dt = y d/dt log sqrt(t^2 lam + (1 - t)^2) for
y = x - t mu, so the flow map is exactly x1 = mu + S^{1/2} x0 (symmetric root).
The conditional variance is Var(u | x_t) = lam / (t^2 lam + (1 - t)^2) per
eigen-direction, whose integral over t in [0, 1] is pi sqrt(lam) / 2: the
irreducible loss is (pi / 2) tr(S^{1/2}).
"""
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import train
from genjax.flows import matching, ode, ot_coupling, paths, rectified
from genjax.nn.mlp import TimeMLP

MU = jnp.array([1.0, -0.5])
# A correlated covariance, so the Jacobian of v is not diagonal (Hutchinson with
# Rademacher probes is exact for diagonal Jacobians and would test nothing).
S = jnp.array([[1.5, 0.6], [0.6, 0.5]])
LAM, Q = jnp.linalg.eigh(S)
S_HALF = Q @ jnp.diag(jnp.sqrt(LAM)) @ Q.T


def exact_velocity(x, t):
    t = t[:, None]
    c = (t * LAM - (1 - t)) / (t**2 * LAM + (1 - t) ** 2)  # (N, D) eigen-coefficients
    y = (x - t * MU) @ Q
    return MU + (c * y) @ Q.T


def target_log_prob(x):
    diff = x - MU
    quad = jnp.sum(diff * jnp.linalg.solve(S, diff.T).T, axis=1)
    return -0.5 * quad - 0.5 * jnp.linalg.slogdet(S)[1] - math.log(2 * math.pi)


def test_exact_velocity_is_the_conditional_expectation():
    # Sanity check of the closed form itself: at t = 0, x_t = x0, so v = mu - x.
    x = jnp.array([[0.3, -1.2], [2.0, 0.1]])
    np.testing.assert_allclose(exact_velocity(x, jnp.zeros(2)), MU - x, atol=1e-6)


SCHEDULERS = [
    paths.CondOTScheduler(),
    paths.CondOTScheduler(sigma_min=0.1),
    paths.CosineScheduler(),
    paths.VPScheduler(),
]


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: repr(s))
def test_scheduler_derivatives_and_path_velocity(scheduler):
    t = jnp.linspace(0.02, 0.98, 7)
    for fn, dfn in ((scheduler.alpha, scheduler.d_alpha), (scheduler.sigma, scheduler.d_sigma)):
        np.testing.assert_allclose(dfn(t), jax.vmap(jax.grad(fn))(t), rtol=1e-4, atol=1e-5)
    # The target velocity is the time derivative of the conditional path.
    path = paths.AffinePath(scheduler)
    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(k0, (7, 3))
    x1 = jax.random.normal(k1, (7, 3))
    _, dxdt = jax.jvp(lambda s: path.sample_xt(x0, x1, s), (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(path.target_velocity(x0, x1, t), dxdt, rtol=1e-4, atol=1e-5)


class PathClosedFormTest(chex.TestCase):
    """Closed forms of the paths, each computed under `jax.jit` and eagerly
    (`chex.variants`, which unrolls one test per variant in a `chex.TestCase`)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_path_endpoints(self):
        x0, x1 = jnp.ones((2, 3)), 2.0 * jnp.ones((2, 3))
        for path in (paths.cond_ot_path(), paths.vp_path()):
            sample_xt = self.variant(path.sample_xt)
            endpoints = (sample_xt(x0, x1, jnp.zeros(2)), sample_xt(x0, x1, jnp.ones(2)))
            # rtol=1e-7 is numpy's default, which the atol-only checks had.
            chex.assert_trees_all_close(endpoints, (x0, x1), atol=1e-6, rtol=1e-7)
        vp = paths.VPScheduler()
        alpha, sigma = self.variant(lambda t: (vp.alpha(t), vp.sigma(t)))(jnp.linspace(0.0, 1.0, 5))
        chex.assert_trees_all_close(alpha**2 + sigma**2, 1.0, atol=1e-6, rtol=1e-7)


def test_ode_sample_transports_noise_to_the_gaussian():
    x0 = jax.random.normal(jax.random.PRNGKey(1), (4000, 2))
    x1, nfe = jax.jit(lambda x: ode.ode_sample(None, exact_velocity, x.shape, x_init=x))(x0)
    # The exact flow map is affine: x1 = mu + S^{1/2} x0 (module docstring);
    # 1e-4 is the adaptive solver's tolerance scale (rtol = atol = 1e-5) with margin.
    np.testing.assert_allclose(x1, MU + x0 @ S_HALF, atol=1e-4)
    assert 0 < nfe < 1000
    # Distribution check at CLT tolerance: 4 standard errors per entry.
    n = x1.shape[0]
    mean_se = np.sqrt(np.diag(S) / n)
    np.testing.assert_array_less(np.abs(np.mean(x1, 0) - MU), 4 * mean_se)
    cov_se = np.sqrt((np.outer(np.diag(S), np.diag(S)) + np.asarray(S) ** 2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x1.T) - S), 4 * cov_se)


def test_exact_log_likelihood_matches_analytic_density():
    x = MU + jax.random.normal(jax.random.PRNGKey(2), (16, 2)) @ S_HALF * 1.5
    logp, _ = jax.jit(lambda x: ode.log_likelihood(None, exact_velocity, x))(x)
    np.testing.assert_allclose(logp, target_log_prob(x), atol=1e-3)


def test_hutchinson_log_likelihood_is_unbiased():
    x = jnp.array([[0.5, 0.2]])
    reps = 512  # one point, 512 independent probe draws (one per row)
    est, _ = jax.jit(
        lambda k: ode.log_likelihood(k, exact_velocity, jnp.repeat(x, reps, 0), exact_divergence=False)
    )(jax.random.PRNGKey(3))
    se = np.std(est) / np.sqrt(reps)
    assert se > 1e-3  # the estimator is actually random here
    assert abs(np.mean(est) - float(target_log_prob(x)[0])) < 3 * se


def test_fixed_step_orders_of_convergence():
    x0 = jax.random.normal(jax.random.PRNGKey(4), (64, 2))
    ref, _ = ode.ode_sample(None, exact_velocity, x0.shape, x_init=x0, rtol=1e-7, atol=1e-7)

    @jax.jit
    def errors(x0):
        out = {}
        for method in ("euler", "heun"):
            for n in (16, 32):
                x, _ = ode.ode_sample(None, exact_velocity, x0.shape, method=method, num_steps=n, x_init=x0)
                out[method, n] = jnp.max(jnp.abs(x - ref))
        return out

    err = errors(x0)
    # Halving the step divides a p-th order method's global error by ~2^p.
    assert 0.8 < math.log2(err["euler", 16] / err["euler", 32]) < 1.3
    assert 1.7 < math.log2(err["heun", 16] / err["heun", 32]) < 2.3
    assert err["heun", 32] < err["euler", 32]


def test_loss_at_exact_velocity_is_the_irreducible_variance():
    n = 20000
    x1 = MU + jax.random.normal(jax.random.PRNGKey(5), (n, 2)) @ S_HALF
    path = paths.cond_ot_path()
    key = jax.random.PRNGKey(6)

    @jax.jit
    def losses(x1):
        exact = matching.flow_matching_loss(key, path, exact_velocity, x1)
        shifted = matching.flow_matching_loss(key, path, lambda x, t: exact_velocity(x, t) + 0.3, x1)
        return exact, shifted

    exact, shifted = losses(x1)
    irreducible = 0.5 * math.pi * float(jnp.sum(jnp.sqrt(LAM)))
    assert abs(np.mean(exact) - irreducible) < 4 * np.std(exact) / np.sqrt(n)
    # A constant shift c adds exactly ||c||^2 = 2 * 0.09 to the population loss.
    assert np.mean(shifted) > np.mean(exact) + 0.1


def test_a_velocity_of_the_wrong_shape_is_an_assertion_not_a_broadcast():
    # An (N, 1) field minus the (N, 2) target would broadcast into a wrong loss.
    x1 = jnp.zeros((8, 2))
    column_field = lambda x, t: jnp.sum(x, axis=1, keepdims=True)
    with pytest.raises(AssertionError, match="velocity_fn"):
        matching.flow_matching_loss(jax.random.PRNGKey(0), paths.cond_ot_path(), column_field, x1)


def test_ot_permutation_is_the_optimal_assignment():
    k0, k1 = jax.random.split(jax.random.PRNGKey(7))
    x0 = jax.random.normal(k0, (6, 3))
    x1 = jax.random.normal(k1, (6, 3)) + 1.0

    a, b = np.asarray(x0, np.float64), np.asarray(x1, np.float64)

    def cost(perm):
        return float(np.sum((a[list(perm)] - b) ** 2))

    perm = np.asarray(jax.jit(ot_coupling.ot_permutation)(x0, x1))
    assert sorted(perm.tolist()) == list(range(6))
    brute = min(cost(p) for p in itertools.permutations(range(6)))
    assert cost(perm) == pytest.approx(brute, rel=1e-5)
    assert cost(perm) < cost(range(6))
    # Under vmap (ensembles) the callback runs once per member.
    perms = jax.vmap(ot_coupling.ot_permutation)(jnp.stack([x0, x1]), jnp.stack([x1, x0]))
    np.testing.assert_array_equal(perms[0], perm)


def test_ot_coupling_lowers_the_loss_target_variance():
    # With OT pairs the target u = x1 - x0 has a smaller spread than with
    # independent pairs: sum_j ||x0_perm(j) - x1_j||^2 <= the identity pairing's.
    x1 = jax.random.normal(jax.random.PRNGKey(8), (64, 2)) * 0.5 + 3.0
    x0 = jax.random.normal(jax.random.PRNGKey(9), (64, 2))
    paired, _ = jax.jit(ot_coupling.minibatch_ot_coupling)(None, x0, x1)
    assert jnp.sum((paired - x1) ** 2) < jnp.sum((x0 - x1) ** 2)
    np.testing.assert_allclose(jnp.sort(paired[:, 0]), jnp.sort(x0[:, 0]))


def test_straightness():
    a, b = jnp.array([[1.0, -2.0]]), jnp.array([[3.0, 0.5]])
    constant = lambda x, t: jnp.broadcast_to(b - a, x.shape)  # exact CondOT flow between point masses
    s, _ = rectified.straightness(None, constant, a, num_steps=10)
    assert abs(float(s)) < 1e-5 * float(jnp.sum((b - a) ** 2))
    # A rotation by one radian: S = r^2 (1 - |e^i - 1|^2) = r^2 (2 cos 1 - 1).
    rot = jnp.array([[0.0, -1.0], [1.0, 0.0]])
    x_init = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    s, _ = rectified.straightness(None, lambda x, t: x @ rot.T, x_init, num_steps=None, method="adaptive")
    assert float(s) == pytest.approx(2.5 * (2 * math.cos(1.0) - 1), rel=1e-4)


def test_reflow_of_the_exact_flow_is_straight():
    # One reflow round on the exact (curved) Gaussian flow: the pairs are
    # x1 = mu + A x0 with A = S^{1/2}, whose straight-line marginal velocity is
    # v(x, t) = mu + (A - I)((1 - t) I + t A)^{-1} (x - t mu): straightness 0
    # and zero paired loss, while the original flow is curved.
    x0, x1 = jax.jit(lambda k: rectified.reflow_pairs(k, exact_velocity, 256, (2,)))(jax.random.PRNGKey(10))
    np.testing.assert_allclose(x1, MU + x0 @ S_HALF, atol=1e-4)

    def reflowed(x, t):
        m = (1 - t)[:, None, None] * jnp.eye(2) + t[:, None, None] * S_HALF
        y = jnp.linalg.solve(m, (x - t[:, None] * MU)[..., None])[..., 0]
        return MU + y @ (S_HALF - jnp.eye(2)).T

    @jax.jit
    def check(x0, x1):
        curved, _ = rectified.straightness(None, exact_velocity, x0, num_steps=200)
        straight, _ = rectified.straightness(None, reflowed, x0, num_steps=200)
        loss = matching.paired_flow_matching_loss(jax.random.PRNGKey(11), paths.cond_ot_path(), reflowed, x0, x1)
        return curved, straight, loss

    curved, straight, loss = check(x0, x1)
    assert curved > 0.05
    assert abs(float(straight)) < 1e-4
    assert float(jnp.max(loss)) < 1e-6


def test_model_trains_with_the_trainer_and_checks_shapes():
    model = matching.make_flow_matching_model(TimeMLP(hidden=(32, 32)), data_shape=(2,))
    steps = 150
    optimizer, _ = train.make_optimizer(learning_rate=3e-3, total_steps=steps)

    def batch_fn(key, step):
        return MU + jax.random.normal(jax.random.fold_in(key, step), (128, 2)) @ S_HALF

    init = jax.jit(lambda key, x: train.init_state(model.init, optimizer, key, x))
    state = init(jax.random.PRNGKey(12), batch_fn(jax.random.PRNGKey(0), 0))
    eval_x = batch_fn(jax.random.PRNGKey(13), 0)
    eval_key = jax.random.PRNGKey(14)
    eval_loss = jax.jit(lambda params: model.loss(params, eval_key, eval_x)[0])
    before = eval_loss(state.params)
    # The OT-coupled model (host callback under jit): at the zero-initialised net
    # its loss is the mean of ||x1 - x0||^2 over the pairs, and with the same noise
    # draw the OT pairing minimises exactly that sum.
    ot_model = matching.make_flow_matching_model(TimeMLP(hidden=(32, 32)), data_shape=(2,), ot_coupling=True)
    ot_before = jax.jit(lambda params: ot_model.loss(params, eval_key, eval_x)[0])(state.params)
    assert ot_before < before
    train_fn = jax.jit(train.make_train_fn(model.loss, optimizer, steps_per_call=steps, batch_fn=batch_fn))
    state, metrics = train_fn(state)
    after = eval_loss(state.params)
    assert np.all(np.isfinite(metrics["loss"]))
    # The zero-initialised net starts at E||u||^2 = tr(S) + |mu|^2 + D; training
    # must close at least half of the gap to the optimum (pi/2) tr(S^{1/2}).
    irreducible = 0.5 * math.pi * float(jnp.sum(jnp.sqrt(LAM)))
    assert after < before - 0.5 * (before - irreducible)

    samples, logp = jax.jit(lambda params: (
        model.sample(params, jax.random.PRNGKey(15), 8, method="heun", num_steps=8),
        model.log_prob(params, jax.random.PRNGKey(16), eval_x[:4], method="rk4", num_steps=8),
    ))(state.params)
    assert samples.shape == (8, 2)
    assert logp.shape == (4,) and np.all(np.isfinite(logp))

    bad = jnp.zeros((4, 3))
    for call in (lambda: model.init(jax.random.PRNGKey(0), bad),
                 lambda: model.loss(state.params, eval_key, bad),
                 lambda: model.log_prob(state.params, eval_key, bad)):
        with pytest.raises(ValueError, match=r"\(2,\).*\(4, 3\)"):
            call()


def test_paired_model_trains_on_fixed_pairs():
    x0 = jax.random.normal(jax.random.PRNGKey(17), (64, 2))
    pairs = (x0, MU + x0 @ S_HALF)
    model = matching.make_flow_matching_model(TimeMLP(hidden=(16,)), data_shape=(2,), paired=True)
    params = jax.jit(model.init)(jax.random.PRNGKey(18), pairs)
    (value, metrics), grads = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(
        params, jax.random.PRNGKey(19), pairs)
    assert value.shape == () and "fm_loss" in metrics
    assert optax.tree.norm(grads) > 0
    with pytest.raises(ValueError, match="noise x0"):
        model.loss(params, jax.random.PRNGKey(19), (x0[:, :1], pairs[1]))


# ----------------------------------------------------------------------------- labels and guidance

NUM_CLASSES = 3


def _conditional_model(label_dropout=0.1):
    net = TimeMLP(hidden=(16,), num_classes=NUM_CLASSES)
    return net, matching.make_flow_matching_model(
        net, data_shape=(2,), num_classes=NUM_CLASSES, label_dropout=label_dropout)


def _conditional_params(net, model):
    """Parameters moved off the zero-initialised output layer, so v depends on x, t and c."""
    from flow_testing import perturb

    batch = {"x": jnp.zeros((4, 2)), "label": jnp.arange(4) % NUM_CLASSES}
    init = jax.jit(lambda k: perturb(model.init(k, batch), jax.random.PRNGKey(21), 0.5))
    return init(jax.random.PRNGKey(20))


def test_labels_change_the_velocity_and_guidance_mixes_it():
    net, model = _conditional_model()
    params = _conditional_params(net, model)
    x0 = jax.random.normal(jax.random.PRNGKey(22), (6, 2))
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    null = jnp.full((6,), NUM_CLASSES)

    @jax.jit
    def run(params):
        t0 = jnp.zeros((6,))
        v = lambda c: net.apply(params, x0, t0, c)
        # One Euler step from t = 0 moves x0 by exactly v(x0, 0): the sampler's velocity.
        step = lambda **kw: model.sample(params, None, 6, method="euler", num_steps=1, x_init=x0, **kw) - x0
        guided = {w: step(labels=labels, guidance=w) for w in (0.0, 0.5, 2.0)}
        logp = lambda **kw: model.log_prob(params, None, x0, method="rk4", num_steps=4, **kw)
        return (v(labels), v(null), v((labels + 1) % NUM_CLASSES), guided, step(),
                logp(), logp(labels=null), logp(labels=labels))

    v_c, v_u, v_other, guided, default, logp_null, logp_null_explicit, logp_c = run(params)
    # Another class gives another velocity (a label-blind net would give equal rows).
    assert float(jnp.min(jnp.abs(v_c - v_other).sum(1))) > 1e-3
    np.testing.assert_allclose(guided[0.0], v_c, rtol=1e-5, atol=1e-6)
    # Both guidance weights at once: a dict pytree keyed by w, so a failure names the weight.
    chex.assert_trees_all_close(
        {w: guided[w] for w in (0.5, 2.0)},
        {w: (1 + w) * v_c - w * v_u for w in (0.5, 2.0)},
        rtol=1e-5, atol=1e-5,
    )
    # Default labels cycle through the classes; log_prob without labels is the null model.
    np.testing.assert_allclose(default, v_c, atol=1e-6)
    np.testing.assert_allclose(logp_null, logp_null_explicit, rtol=1e-6)
    assert float(jnp.max(jnp.abs(logp_c - logp_null))) > 1e-4


def test_label_dropout_replaces_labels_by_the_null_label():
    net, _ = _conditional_model()
    _, always = _conditional_model(label_dropout=1.0)
    _, never = _conditional_model(label_dropout=0.0)
    params = _conditional_params(net, never)
    x = jax.random.normal(jax.random.PRNGKey(23), (64, 2))
    labels = jnp.arange(64) % NUM_CLASSES
    null = jnp.full((64,), NUM_CLASSES)
    key = jax.random.PRNGKey(24)

    @jax.jit
    def run(params):
        loss = lambda m, c: m.loss(params, key, {"x": x, "label": c})[0]
        grad = lambda m: jax.grad(lambda p: m.loss(p, key, {"x": x, "label": labels})[0])(params)
        return (loss(always, labels), loss(never, null), loss(never, labels),
                grad(never)["params"]["class_embedding"]["embedding"],
                grad(always)["params"]["class_embedding"]["embedding"])

    dropped, null_loss, kept_loss, grad_kept, grad_dropped = run(params)
    # Same key, same noise and times: dropout 1 is the loss with every label null.
    np.testing.assert_allclose(dropped, null_loss, rtol=1e-6)
    assert abs(float(dropped - kept_loss)) > 1e-4
    # The class rows of the embedding get gradient only from labels that were kept.
    assert float(jnp.abs(grad_kept[:NUM_CLASSES]).sum()) > 0
    assert float(jnp.abs(grad_dropped[:NUM_CLASSES]).sum()) == 0.0


def test_conditional_model_bad_inputs():
    net, model = _conditional_model()
    params = _conditional_params(net, model)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="needs batches"):
        model.loss(params, jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="'x' and 'label'"):
        model.loss(params, jax.random.PRNGKey(0), {"x": x})
    with pytest.raises(ValueError, match=r"\(2,\).*\(4, 3\)"):
        model.loss(params, jax.random.PRNGKey(0), {"x": jnp.zeros((4, 3)), "label": jnp.zeros(4, int)})
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        model.sample(params, jax.random.PRNGKey(0), 4, guidance=-1.0)
    with pytest.raises(ValueError, match="batch 4 but 3 labels"):
        model.sample(params, jax.random.PRNGKey(0), 4, method="euler", num_steps=1,
                     labels=jnp.zeros(3, int), guidance=1.0)
    unconditional = matching.make_flow_matching_model(TimeMLP(hidden=(8,)), data_shape=(2,))
    uparams = unconditional.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        unconditional.sample(uparams, jax.random.PRNGKey(0), 4, guidance=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        matching.make_flow_matching_model(TimeMLP(hidden=(8,)), data_shape=(2,), num_classes=0)
