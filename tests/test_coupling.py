"""Tests for genjax.flows.coupling: affine and spline coupling layers."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_testing import jacobian_log_dets, perturb
from genjax.flows.bijectors import Chain, Invertible1x1Conv, Reverse
from genjax.flows.coupling import AffineCoupling, SplineCoupling

# float32 round-off on sums of at most ~50 O(1) terms: 1e-4 is a safe margin,
# while a wrong log-det term is off by O(0.1).
ATOL = 1e-4
RTOL = 1e-4

VECTOR = (5,)  # odd on purpose: uneven split, 2 vs 3 features
IMAGE = (4, 4, 3)


def make_layer(kind, event_shape, swap):
    if kind == "affine":
        return AffineCoupling(event_shape, hidden=(16,), swap=swap)
    return SplineCoupling(event_shape, hidden=(16,), swap=swap, num_bins=4, bound=2.0)


def fns(module, params):
    forward = jax.jit(lambda x: module.apply(params, x))
    inverse = jax.jit(lambda y: module.apply(params, y, method=type(module).inverse_and_log_det))
    return forward, inverse


CASES = [
    pytest.param(kind, event, swap, id=f"{kind}-{'image' if len(event) == 3 else 'vector'}-swap{swap}")
    for kind in ("affine", "spline")
    for event, swap in ((VECTOR, False), (VECTOR, True), (IMAGE, True))
]


@pytest.mark.parametrize("kind,event_shape,swap", CASES)
def test_coupling_inverts_and_log_det_matches_jacobian(kind, event_shape, swap):
    kx, ky, kinit, kp = jax.random.split(jax.random.PRNGKey(0), 4)
    # Spread 1.5: some spline inputs fall in the identity tails beyond bound 2.
    x = 1.5 * jax.random.normal(kx, (3, *event_shape))
    y = 1.5 * jax.random.normal(ky, (3, *event_shape))
    layer = make_layer(kind, event_shape, swap)
    params = perturb(jax.jit(layer.init)(kinit, x), kp, 0.5)
    forward, inverse = fns(layer, params)

    fx, ld = forward(x)
    # Each round trip returns (input, minus the log-det): one pytree comparison.
    chex.assert_trees_all_close(inverse(fx), (x, -ld), atol=ATOL, rtol=RTOL)
    iy, ld_iy = inverse(y)
    chex.assert_trees_all_close(forward(iy), (y, -ld_iy), atol=ATOL, rtol=RTOL)

    # The perturbation makes the layer non-trivial, so the check below has teeth.
    assert float(jnp.max(jnp.abs(fx - x))) > 1e-2
    assert float(jnp.max(jnp.abs(ld))) > 1e-2
    chex.assert_trees_all_close(
        (ld, ld_iy), (jacobian_log_dets(forward, x), jacobian_log_dets(inverse, y)), atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize("kind", ["affine", "spline"])
@pytest.mark.parametrize("swap", [False, True])
def test_conditioning_half_passes_through_unchanged(kind, swap):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, *VECTOR))
    layer = make_layer(kind, VECTOR, swap)
    params = perturb(layer.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2), 0.3)
    y, _ = layer.apply(params, x)
    k = VECTOR[0] // 2
    kept = slice(k, None) if swap else slice(None, k)
    changed = slice(None, k) if swap else slice(k, None)
    np.testing.assert_array_equal(y[:, kept], x[:, kept])
    assert float(jnp.min(jnp.max(jnp.abs(y[:, changed] - x[:, changed]), axis=0))) > 1e-3


@pytest.mark.parametrize("kind", ["affine", "spline"])
@pytest.mark.parametrize("event_shape", [VECTOR, IMAGE], ids=["vector", "image"])
def test_coupling_starts_at_identity(kind, event_shape):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *event_shape))
    layer = make_layer(kind, event_shape, False)
    params = layer.init(jax.random.PRNGKey(1), x)
    # rtol=1e-7 is numpy's default, which the atol-only checks had.
    chex.assert_trees_all_close(layer.apply(params, x), (x, jnp.zeros(2)), atol=1e-5, rtol=1e-7)


class ClosedFormTest(chex.TestCase):
    """Closed-form outputs, each checked with the layer under `jax.jit` and run
    eagerly (`chex.variants`, which unrolls one test per variant in a `chex.TestCase`)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_affine_log_scale_is_soft_clamped(self):
        layer = AffineCoupling((2,), hidden=(4,), log_scale_bound=1.5)
        x = jnp.array([[3.0, 0.5]])
        params = layer.init(jax.random.PRNGKey(0), x)
        # Huge raw log-scale from the last layer's bias: each dim's log-det saturates at c.
        bias = params["params"]["conditioner"]["Dense_1"]["bias"]
        params["params"]["conditioner"]["Dense_1"]["bias"] = bias.at[1].set(1e3)
        _, log_det = self.variant(layer.apply)(params, x)
        chex.assert_trees_all_close(log_det, jnp.array([1.5]), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_spline_coupling_is_identity_beyond_the_bound(self):
        layer = SplineCoupling((2,), hidden=(8,), num_bins=4, bound=2.0)
        x = jnp.array([[0.3, 5.0], [-0.7, -2.5]])
        params = perturb(layer.init(jax.random.PRNGKey(0), x), jax.random.PRNGKey(1), 0.5)
        chex.assert_trees_all_equal(self.variant(layer.apply)(params, x), (x, jnp.zeros(2)))


def test_coupling_flow_gradients_are_finite_under_jit():
    """A small RealNVP-style stack: NLL gradients exist everywhere, tails included."""
    event = (4,)
    flow = Chain(
        (
            SplineCoupling(event, hidden=(8,), num_bins=4, bound=2.0),
            Invertible1x1Conv(event),
            AffineCoupling(event, hidden=(8,)),
            Reverse(event),
        )
    )
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (16, *event))
    params = perturb(flow.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2), 0.3)

    def nll(p):
        z, log_det = flow.apply(p, x)
        return jnp.mean(0.5 * jnp.sum(z**2, axis=-1) - log_det)

    value, grads = jax.jit(jax.value_and_grad(nll))(params)
    assert bool(jnp.isfinite(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    z, _ = flow.apply(params, x)
    x_back, _ = flow.apply(params, z, method=Chain.inverse_and_log_det)
    np.testing.assert_allclose(x_back, x, atol=ATOL, rtol=RTOL)


def re_shape(shape):
    """Regex for a shape tuple as Python prints it: (1,) or (4, 4, 1)."""
    return r"\(" + r", ".join(str(d) for d in shape) + (r",\)" if len(shape) == 1 else r"\)")


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_unsplittable_event_raises(kind):
    for event in [(1,), (4, 4, 1)]:
        layer = make_layer(kind, event, False)
        with pytest.raises(ValueError, match=r"split.*" + re_shape(event)):
            layer.init(jax.random.PRNGKey(0), jnp.zeros((2, *event)))
    layer = make_layer(kind, (4, 4), False)
    with pytest.raises(ValueError, match=r"\(D,\).*\(H, W, C\).*\(4, 4\)"):
        layer.init(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4)))


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_wrong_input_shape_raises_naming_the_shapes(kind):
    layer = make_layer(kind, VECTOR, False)
    with pytest.raises(ValueError, match=r"\(5,\).*\(2, 6\)"):
        layer.init(jax.random.PRNGKey(0), jnp.zeros((2, 6)))
    params = layer.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"\(5,\).*\(2, 4, 5\)"):
        layer.apply(params, jnp.zeros((2, 4, 5)), method=type(layer).inverse_and_log_det)
