"""The shared ODE path: solver orders, the batch max norm, NFE counts, divergences
and the change-of-variables likelihood, against closed forms."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import integrate

RATE = jnp.array([-1.0, 0.5])  # dy/dt = RATE * y, y(t) = y0 exp(RATE t)


def _linear(y, t):
    return RATE * y


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    errors = []
    with jax.enable_x64(True):  # float32 round-off would hide rk4's truncation error
        rate = jnp.asarray(RATE, jnp.float64)
        y0 = jnp.ones((3, 2), jnp.float64)
        exact = y0 * jnp.exp(rate)
        for n in (8, 16, 32):
            y1, nfe = integrate.solve_ode(lambda y, t: rate * y, y0, 0.0, 1.0, method=method, num_steps=n)
            errors.append(float(jnp.max(jnp.abs(y1 - exact))))
            assert nfe == n * {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
    observed = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    # Error ~ C h^order: halving h divides it by 2^order (within 0.3 in the exponent).
    assert all(abs(o - order) < 0.3 for o in observed), observed


def test_adaptive_backwards_in_time_and_counts_evaluations():
    y1 = jnp.ones((4, 2))
    calls = []

    def counted(y, t):
        jax.debug.callback(lambda: calls.append(1))
        return _linear(y, t)

    y0, nfe = integrate.solve_ode(counted, y1, 1.0, 0.0, rtol=1e-7, atol=1e-7)
    jax.effects_barrier()
    np.testing.assert_allclose(y0, y1 * jnp.exp(-RATE), rtol=1e-5)
    assert int(nfe) == len(calls)


def test_step_size_is_set_by_the_worst_example():
    """999 slow rotations and one fast one. An RMS over the whole batch would dilute
    the fast example's error by sqrt(1000) ~ 32; the max norm keeps it near tolerance."""
    omega = jnp.concatenate([jnp.full((999,), 0.1), jnp.array([20.0])])

    def rotate(y, t):
        return omega[:, None] * jnp.stack([-y[:, 1], y[:, 0]], axis=1)

    y0 = jnp.tile(jnp.array([[1.0, 0.0]]), (1000, 1))
    y1, _ = integrate.solve_ode(rotate, y0, 0.0, 1.0, rtol=1e-4, atol=1e-4)
    exact = jnp.stack([jnp.cos(omega), jnp.sin(omega)], axis=1)
    err_fast = float(jnp.linalg.norm(y1[-1] - exact[-1]))
    # 20 radians of rotation accumulate local errors of ~1e-4 into ~1e-3.
    assert err_fast < 3e-3, err_fast
    # The same solver with the usual RMS over the whole batch is far worse.
    y1_rms, _ = integrate.solve_ode(rotate, y0, 0.0, 1.0, rtol=1e-4, atol=1e-4, error_norm="rms")
    assert float(jnp.linalg.norm(y1_rms[-1] - exact[-1])) > 10 * err_fast


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="adaptive.*euler"):
        integrate.solve_ode(_linear, jnp.ones((1, 2)), 0.0, 1.0, method="rk45")
    with pytest.raises(ValueError, match="num_steps"):
        integrate.solve_ode(_linear, jnp.ones((1, 2)), 0.0, 1.0, method="euler")


@pytest.mark.parametrize("method", integrate.FIXED_STEP_METHODS)
def test_trajectory_ends_where_solve_ode_does(method):
    # A pytree state, integrated backwards: every saved state is the same step's.
    state0 = (jnp.ones((3, 2)), jnp.zeros((3,)))
    field = lambda s, t: (_linear(s[0], t), jnp.sum(s[0] ** 2, axis=1) * t)
    ys, nfe = integrate.solve_ode_trajectory(field, state0, 1.0, 0.25, method=method, num_steps=5)
    y1, nfe1 = integrate.solve_ode(field, state0, 1.0, 0.25, method=method, num_steps=5)
    assert nfe == nfe1
    chex.assert_shape(ys, [(6, 3, 2), (6, 3)])
    # Whole pytree states: the first saved state is y0, the last is solve_ode's.
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[0], ys), state0)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[-1], ys), y1, rtol=1e-6, atol=1e-7)
    two, _ = integrate.solve_ode(field, state0, 1.0, 0.25, method=method, ts=jnp.linspace(1.0, 0.25, 6)[:3])
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[2], ys), two, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="fixed-step"):
        integrate.solve_ode_trajectory(field, state0, 1.0, 0.25, method="adaptive")


def _random_field(key, dim):
    w1 = jax.random.normal(key, (dim, 16)) / math.sqrt(dim)
    w2 = jax.random.normal(jax.random.fold_in(key, 1), (16, dim)) / 4.0
    return lambda x: jnp.tanh(x @ w1) @ w2 + 0.3 * x


class ClosedFormTest(chex.TestCase):
    """Divergences and likelihoods against closed forms, each computed under `jax.jit`
    and eagerly (`chex.variants`, which unrolls one test per variant in a `chex.TestCase`)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_exact_divergence_equals_jacobian_trace(self):
        fn = _random_field(jax.random.PRNGKey(0), 5)
        x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
        fx, div = self.variant(lambda v: integrate.value_and_divergence(fn, v))(x)
        traces = jnp.stack([jnp.trace(jax.jacfwd(lambda v: fn(v[None])[0])(xi)) for xi in x])
        chex.assert_trees_all_close(fx, self.variant(fn)(x), rtol=1e-6)
        chex.assert_trees_all_close(div, traces, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_change_of_variables_for_a_linear_field(self):
        """dx/dt = A x from t0=0 to t1=1: z = expm(A) x and log p(x) = log N(z) + tr(A)."""
        a = jnp.array([[-0.5, 0.3], [0.1, 0.2]])
        x = jax.random.normal(jax.random.PRNGKey(0), (50, 2))
        base = lambda z: jnp.sum(jax.scipy.stats.norm.logpdf(z), axis=1)
        log_likelihood = self.variant(lambda v: integrate.ode_log_likelihood(
            None, lambda y, t: y @ a.T, v, 0.0, 1.0, base, rtol=1e-7, atol=1e-7))
        logp, z, _ = log_likelihood(x)
        z_exact = x @ jax.scipy.linalg.expm(a).T
        chex.assert_trees_all_close((z, logp), (z_exact, base(z_exact) + jnp.trace(a)), rtol=1e-5, atol=1e-5)


def test_shape_mismatches_are_assertions_not_broadcasts():
    x = jnp.ones((4, 2))
    # A field whose output is not its state's shape: the probes would broadcast.
    with pytest.raises(AssertionError, match="vector field"):
        integrate.value_and_divergence(lambda v: jnp.sum(v, axis=1, keepdims=True), x)
    # A base density of shape (N, 1) would make an (N, N) log-likelihood.
    column_base = lambda z: jnp.sum(jax.scipy.stats.norm.logpdf(z), axis=1, keepdims=True)
    with pytest.raises(AssertionError, match="base_log_prob"):
        integrate.ode_log_likelihood(None, lambda y, t: -y, x, 0.0, 1.0, column_base,
                                     method="euler", num_steps=2)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
    fn = _random_field(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    probes = integrate.hutchinson_probes(jax.random.PRNGKey(2), x, num_probes=20_000, kind=kind)
    _, est = integrate.value_and_divergence(fn, x, probes)
    _, exact = integrate.value_and_divergence(fn, x)
    single = jax.vmap(lambda v: integrate.value_and_divergence(fn, x, v[None])[1])(probes[:2000])
    stderr = jnp.std(single, axis=0) / math.sqrt(20_000)
    assert bool(jnp.all(jnp.abs(est - exact) < 4 * stderr + 1e-6)), (est, exact, stderr)
