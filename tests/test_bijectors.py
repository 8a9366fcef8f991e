"""Tests for genjax.flows.bijectors: invertibility and log-dets against the Jacobian."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_testing import jacobian_log_dets, perturb
from genjax.flows.bijectors import (
    ActNorm,
    Chain,
    Invertible1x1Conv,
    Logit,
    Permute,
    Reverse,
    Squeeze,
    random_permutation,
    rational_quadratic_spline,
)

# float32 round-off: each check sums at most a few dozen O(1) terms, each with
# relative error ~1e-6, so 1e-4 leaves a safe margin without hiding real bugs
# (a wrong log-det is off by O(0.1) or more).
ATOL = 1e-4
RTOL = 1e-4


def check_bijection(forward, inverse, x, y):
    """inverse(forward(x)) = x, forward(inverse(y)) = y, log-dets agree with the Jacobian."""
    forward, inverse = jax.jit(forward), jax.jit(inverse)
    fx, ld_fwd = forward(x)
    chex.assert_shape(ld_fwd, (x.shape[0],))
    # Each round trip returns (input, minus the log-det): one pytree comparison.
    chex.assert_trees_all_close(inverse(fx), (x, -ld_fwd), atol=ATOL, rtol=RTOL)
    iy, ld_iy = inverse(y)
    chex.assert_trees_all_close(forward(iy), (y, -ld_iy), atol=ATOL, rtol=RTOL)
    chex.assert_trees_all_close(
        (ld_fwd, ld_iy),
        (jacobian_log_dets(forward, x), jacobian_log_dets(inverse, y)),
        atol=ATOL, rtol=RTOL,
    )


def module_fns(module, params):
    def forward(x):
        return module.apply(params, x, method=type(module).forward_and_log_det)

    def inverse(y):
        return module.apply(params, y, method=type(module).inverse_and_log_det)

    return forward, inverse


def normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


# ----------------------------------------------------------------------------
# Parameter-free bijections.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("event_shape", [(5,), (2, 3, 4)], ids=["vector", "image"])
def test_permutations_invert_and_have_zero_log_det(event_shape):
    x, y = normal(0, (3, *event_shape)), normal(1, (3, *event_shape))
    perm = random_permutation(jax.random.PRNGKey(2), event_shape)
    for b in (perm, Reverse(event_shape)):
        check_bijection(b.forward_and_log_det, b.inverse_and_log_det, x, y)
        np.testing.assert_array_equal(b.forward_and_log_det(x)[1], 0.0)
    # Reverse moves the last feature first; Permute follows its index map.
    np.testing.assert_array_equal(Reverse(event_shape).forward_and_log_det(x)[0][..., 0], x[..., -1])
    np.testing.assert_array_equal(
        perm.forward_and_log_det(x)[0][..., 1], x[..., perm.permutation[1]]
    )


def test_logit_inverts_and_matches_jacobian():
    event = (6,)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, *event))
    y = 3.0 * normal(1, (4, *event))
    b = Logit(event, alpha=0.05)
    check_bijection(b.forward_and_log_det, b.inverse_and_log_det, x, y)


def test_squeeze_moves_2x2_blocks_to_channels_and_inverts():
    event = (4, 6, 3)
    x, y = normal(0, (2, *event)), normal(1, (2, 2, 3, 12))
    b = Squeeze(event)
    assert b.out_event_shape == (2, 3, 12)
    check_bijection(b.forward_and_log_det, b.inverse_and_log_det, x, y)
    out, _ = b.forward_and_log_det(x)
    # Output channel (2a + b) * C + c at (i, j) holds input pixel (2i + a, 2j + b), channel c.
    for i, j, a, bb, c in [(0, 0, 0, 0, 0), (1, 2, 1, 0, 2), (0, 1, 1, 1, 1), (1, 0, 0, 1, 0)]:
        np.testing.assert_array_equal(out[:, i, j, (2 * a + bb) * 3 + c], x[:, 2 * i + a, 2 * j + bb, c])


# ----------------------------------------------------------------------------
# Rational-quadratic spline.
# ----------------------------------------------------------------------------

BOUND = 3.0
BINS = 5


def spline_params(seed, shape, scale=1.5):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (
        scale * jax.random.normal(k1, (*shape, BINS)),
        scale * jax.random.normal(k2, (*shape, BINS)),
        scale * jax.random.normal(k3, (*shape, BINS - 1)),
    )


@functools.partial(jax.jit, static_argnames="inverse")
def spline(x, params, inverse=False):
    return rational_quadratic_spline(x, *params, bound=BOUND, inverse=inverse)


def test_spline_maps_interval_onto_itself_monotonically():
    grid = jnp.linspace(-BOUND, BOUND, 2001)
    # One spline shared by every grid point: broadcast one parameter set.
    params = [jnp.broadcast_to(p, (grid.shape[0], p.shape[-1])) for p in spline_params(0, ())]
    y, log_det = spline(grid, params)
    np.testing.assert_allclose(y[0], -BOUND, atol=1e-6)
    np.testing.assert_allclose(y[-1], BOUND, atol=1e-5)
    assert bool(jnp.all(jnp.diff(y) > 0)), "spline is not strictly increasing on [-B, B]"
    assert bool(jnp.all(jnp.isfinite(log_det)))
    # Not the identity: the random parameters bend it.
    assert float(jnp.max(jnp.abs(y - grid))) > 0.1


class ClosedFormTest(chex.TestCase):
    """Closed-form values, each checked with the map under `jax.jit` and run eagerly
    (`chex.variants`): the two paths trace differently (static shapes and Python
    branches at trace time, op-by-op dispatch eagerly) and must agree with the formula.
    `chex.variants` unrolls into one test per variant through absl's parameterized
    test class, so these checks live in a `chex.TestCase` rather than plain functions."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_logit_maps_zero_to_logit_alpha(self):
        # Closed form at the boundary: x = 0 maps to logit(alpha).
        y0, _ = self.variant(Logit((6,), alpha=0.05).forward_and_log_det)(jnp.zeros((1, 6)))
        chex.assert_trees_all_close(y0, np.log(0.05 / 0.95), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_spline_is_identity_outside_the_interval(self):
        x = jnp.array([-10.0, -BOUND - 1e-3, BOUND + 1e-3, 7.5])
        params = spline_params(1, x.shape)
        rqs = self.variant(
            functools.partial(rational_quadratic_spline, bound=BOUND), static_argnames="inverse"
        )
        for inverse in (False, True):
            chex.assert_trees_all_equal(rqs(x, *params, inverse=inverse), (x, jnp.zeros_like(x)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_spline_with_zero_parameters_is_identity(self):
        x = jnp.linspace(-BOUND, BOUND, 101)
        zeros = (jnp.zeros((101, BINS)), jnp.zeros((101, BINS)), jnp.zeros((101, BINS - 1)))
        y_and_log_det = self.variant(functools.partial(rational_quadratic_spline, bound=BOUND))(x, *zeros)
        # rtol=1e-7 is numpy's default, which the atol-only check had.
        chex.assert_trees_all_close(y_and_log_det, (x, jnp.zeros_like(x)), atol=1e-5, rtol=1e-7)


def test_spline_inverts_and_log_det_is_derivative():
    # float64: random parameters give bins with slopes down to ~1e-4, where the
    # inverse amplifies float32 round-off in y by 1/slope (checked separately below).
    with jax.enable_x64(True):
        params = [p.astype(jnp.float64) for p in spline_params(2, (64,))]
        x = 1.2 * BOUND * jax.random.uniform(
            jax.random.PRNGKey(3), (64,), jnp.float64, minval=-1, maxval=1
        )
        y, log_det = spline(x, params)
        x_back, inv_log_det = spline(y, params, inverse=True)
        # rtol=1e-7 is numpy's default, which these atol-only checks had.
        chex.assert_trees_all_close((x_back, inv_log_det), (x, -log_det), atol=1e-9, rtol=1e-7)
        # Elementwise map: a JVP with an all-ones tangent gives each dy_i/dx_i.
        _, dydx = jax.jvp(lambda z: spline(z, params)[0], (x,), (jnp.ones_like(x),))
        _, dxdy = jax.jvp(lambda z: spline(z, params, inverse=True)[0], (y,), (jnp.ones_like(y),))
        chex.assert_trees_all_close(
            (log_det, inv_log_det), (jnp.log(dydx), jnp.log(dxdy)), atol=1e-9, rtol=1e-9
        )


def test_spline_float32_round_trip_is_accurate_in_output_space():
    params = spline_params(2, (64,))
    x = 1.2 * BOUND * jax.random.uniform(jax.random.PRNGKey(3), (64,), minval=-1, maxval=1)
    y, log_det = spline(x, params)
    x_back, inv_log_det = spline(y, params, inverse=True)
    # Backward error: the inversion error times the local slope is y's round-off
    # (|y| <= 4, eps 1.2e-7), whatever the slope.
    np.testing.assert_allclose((x_back - x) * jnp.exp(log_det), 0.0, atol=1e-5)
    y_back, log_det_back = spline(x_back, params)
    np.testing.assert_allclose(y_back, y, atol=1e-5)
    np.testing.assert_allclose(inv_log_det, -log_det_back, atol=ATOL)


def test_spline_rejects_bad_configuration():
    params = spline_params(0, (3,))
    with pytest.raises(ValueError, match="min_bin_width"):
        rational_quadratic_spline(jnp.zeros(3), *params, bound=BOUND, min_bin_width=0.3)
    with pytest.raises(ValueError, match="K-1 derivatives"):
        rational_quadratic_spline(jnp.zeros(3), params[0], params[1], params[1], bound=BOUND)
    with pytest.raises(ValueError, match="bound"):
        rational_quadratic_spline(jnp.zeros(3), *params, bound=0.0)


# ----------------------------------------------------------------------------
# ActNorm and the invertible 1x1 convolution.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("event_shape", [(4,), (3, 3, 4)], ids=["vector", "image"])
def test_actnorm_data_dependent_init_whitens_the_init_batch(event_shape):
    x = 2.5 * normal(0, (16, *event_shape)) + jnp.arange(4.0)
    module = ActNorm(event_shape)
    params = module.init(jax.random.PRNGKey(1), x)
    y, _ = module.apply(params, x)
    axes = tuple(range(y.ndim - 1))
    np.testing.assert_allclose(jnp.mean(y, axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(y, axis=axes), 1.0, atol=1e-4)


@pytest.mark.parametrize("event_shape", [(4,), (3, 3, 4)], ids=["vector", "image"])
def test_actnorm_inverts_and_matches_jacobian(event_shape):
    x, y = normal(0, (3, *event_shape)), normal(1, (3, *event_shape))
    module = ActNorm(event_shape)
    params = perturb(module.init(jax.random.PRNGKey(2), x), jax.random.PRNGKey(3), 0.5)
    check_bijection(*module_fns(module, params), x, y)


def test_actnorm_initialised_through_inverse_is_identity():
    y = normal(0, (3, 4))
    module = ActNorm((4,))
    params = module.init(jax.random.PRNGKey(0), y, method=ActNorm.inverse_and_log_det)
    x_and_log_det = module.apply(params, y, method=ActNorm.inverse_and_log_det)
    chex.assert_trees_all_equal(x_and_log_det, (y, jnp.zeros(3)))


@pytest.mark.parametrize("event_shape", [(5,), (3, 3, 4)], ids=["vector", "image"])
def test_invertible_1x1_conv_starts_orthogonal(event_shape):
    module = Invertible1x1Conv(event_shape)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *event_shape)))
    w = module.apply(params, method=Invertible1x1Conv.weight)
    c = event_shape[-1]
    np.testing.assert_allclose(w @ w.T, np.eye(c), atol=1e-5)
    _, log_det = module.apply(params, normal(1, (2, *event_shape)))
    np.testing.assert_allclose(log_det, 0.0, atol=1e-5)


@pytest.mark.parametrize("event_shape", [(5,), (3, 3, 4)], ids=["vector", "image"])
def test_invertible_1x1_conv_inverts_and_matches_jacobian(event_shape):
    x, y = normal(0, (3, *event_shape)), normal(1, (3, *event_shape))
    module = Invertible1x1Conv(event_shape)
    params = perturb(module.init(jax.random.PRNGKey(2), x), jax.random.PRNGKey(3), 0.5)
    check_bijection(*module_fns(module, params), x, y)
    # log|det W| computed independently from the matrix.
    w = module.apply(params, method=Invertible1x1Conv.weight)
    positions = int(np.prod(event_shape[:-1]))
    _, ld = module.apply(params, x)
    np.testing.assert_allclose(ld[0], positions * jnp.linalg.slogdet(w)[1], atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------
# Chain.
# ----------------------------------------------------------------------------


def image_chain():
    event = (4, 4, 1)
    squeezed = (2, 2, 4)
    return event, Chain(
        (
            Logit(event),
            ActNorm(event),
            Squeeze(event),
            Invertible1x1Conv(squeezed),
            Reverse(squeezed),
            ActNorm(squeezed),
        )
    )


def test_chain_of_mixed_bijections_inverts_and_matches_jacobian():
    event, chain = image_chain()
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, *event))
    params = perturb(chain.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2), 0.5)
    y = normal(3, (8, 2, 2, 4))
    check_bijection(*module_fns(chain, params), x, y)


def test_chain_log_det_is_sum_of_layer_log_dets_and_jits():
    event, chain = image_chain()
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, *event))
    params = perturb(chain.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2), 0.5)
    y, log_det = jax.jit(chain.apply)(params, x)
    total, h = jnp.zeros(4), x
    for i, layer in enumerate(chain.layers):
        sub = params["params"].get(f"layers_{i}")
        if sub is None:
            h, ld = layer.forward_and_log_det(h)
        else:
            h, ld = layer.apply({"params": sub}, h)
        total = total + ld
    np.testing.assert_allclose(h, y, atol=ATOL)
    np.testing.assert_allclose(log_det, total, atol=ATOL, rtol=RTOL)
    grads = jax.grad(lambda p: jnp.mean(chain.apply(p, x)[1]))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_wrong_event_shape_raises_naming_the_shapes():
    x = jnp.zeros((2, 5))
    for b in (Reverse((4,)), Logit((4,)), Permute((4,), (1, 0, 3, 2))):
        with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
            b.forward_and_log_det(x)
        with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
            b.inverse_and_log_det(x)
    for module in (ActNorm((4,)), Invertible1x1Conv((4,))):
        with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
            module.init(jax.random.PRNGKey(0), x)
        params = module.init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
        with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
            module.apply(params, x, method=type(module).inverse_and_log_det)
    # A missing batch axis is also a shape error, not a silent broadcast.
    with pytest.raises(ValueError, match=r"\(4,\)"):
        Reverse((4,)).forward_and_log_det(jnp.zeros(4))
    with pytest.raises(ValueError, match=r"\(2, 2, 12\).*\(1, 4, 4, 3\)"):
        Squeeze((4, 4, 3)).inverse_and_log_det(jnp.zeros((1, 4, 4, 3)))


class _BatchLogDet:
    """A broken bijection: one log-det for the whole batch instead of one per example."""

    def forward_and_log_det(self, x):
        return x, jnp.zeros(())

    def inverse_and_log_det(self, y):
        return y, jnp.zeros(())


def test_chain_asserts_every_log_det_is_per_example():
    # A scalar log-det would broadcast into the (N,) total; Chain stops it, naming the layer.
    chain = Chain((Reverse((3,)), _BatchLogDet()))
    x = jnp.zeros((4, 3))
    for method in (Chain.forward_and_log_det, Chain.inverse_and_log_det):
        with pytest.raises(AssertionError, match="_BatchLogDet"):
            jax.jit(lambda v: chain.apply({}, v, method=method))(x)


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match=r"even.*\(3, 4, 2\)"):
        Squeeze((3, 4, 2))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        Squeeze((4, 4))
    with pytest.raises(ValueError, match="not a permutation"):
        Permute((3,), (0, 0, 1))
    with pytest.raises(ValueError, match="alpha"):
        Logit((3,), alpha=0.5)
