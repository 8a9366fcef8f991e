"""Tests for genjax.flows.realnvp: exact densities of assembled RealNVP/NSF and Glow flows."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_testing import jacobian_log_dets
from genjax import train
from genjax.flows import realnvp

# float32 sums of a few dozen O(1) log-det terms: 1e-4 (vectors) and 1e-3 (64-dim
# images, values ~100) are safe margins; a wrong term is off by O(0.1).
ATOL = 1e-4


def perturb(params, key, scale=0.5):
    """Adds N(0, scale^2 / fan_in) noise to every parameter, moving the
    zero-initialised coupling outputs away from the identity."""
    leaves, treedef = jax.tree.flatten(params)
    # One draw cut into pieces: each separate random call costs a compilation.
    noise = jax.random.normal(key, (sum(p.size for p in leaves),))
    offsets = np.cumsum([0] + [p.size for p in leaves])
    noisy = [p + scale / math.sqrt(max(1, math.prod(p.shape[:-1]))) * noise[a:b].reshape(p.shape)
             for p, a, b in zip(leaves, offsets[:-1], offsets[1:])]
    return jax.tree.unflatten(treedef, noisy)


def std_normal_log_prob(z):
    z = z.reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(z**2, axis=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def vector_flow(coupling, mixing, dim):
    kwargs = dict(data_shape=(dim,), num_layers=3, hidden=(16,), coupling=coupling, mixing=mixing,
                  num_bins=4, bound=3.0)
    return realnvp.make_realnvp_model(**kwargs), realnvp.realnvp_bijection(**kwargs)


def bound_fns(bijection, params):
    fwd = lambda x: bijection.apply(params, x, method=type(bijection).forward_and_log_det)
    inv = lambda z: bijection.apply(params, z, method=type(bijection).inverse_and_log_det)
    return fwd, inv


# "reverse" mixing is covered by the grid, ActNorm and training tests below.
VECTOR_CASES = [("affine", "lu"), ("spline", "permute")]


@pytest.mark.parametrize("coupling,mixing", VECTOR_CASES)
def test_vector_flow_log_prob_matches_jacobian_and_inverts(coupling, mixing):
    dim = 5
    model, bijection = vector_flow(coupling, mixing, dim)
    kx, kinit, kp, ks = jax.random.split(jax.random.PRNGKey(0), 4)
    x = 1.5 * jax.random.normal(kx, (6, dim)) + 0.5
    params = jax.jit(perturb, static_argnums=2)(jax.jit(model.init)(kinit, x), kp)

    @jax.jit
    def run(params, x):
        fwd, inv = bound_fns(bijection, params)
        samples = model.sample(params, ks, 6)
        both = jnp.concatenate([x, samples])  # one pass each way for data and samples
        z, ld = fwd(both)
        x_back, ld_inv = inv(z)
        return z, ld, x_back, ld_inv, jacobian_log_dets(lambda v: fwd(v)[0], x), model.log_prob(params, None, both)

    z, ld, x_back, ld_inv, slog, logp = run(params, x)
    np.testing.assert_allclose(ld[:6], slog, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(logp, std_normal_log_prob(z) + ld, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(x_back[:6], x, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(ld_inv, -ld, atol=ATOL, rtol=ATOL)
    # Sampling inverts the latent drawn from the key: the forward pass recovers it.
    np.testing.assert_allclose(z[6:], jax.random.normal(ks, (6, dim)), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_density_integrates_to_one_on_a_grid(coupling):
    model, _ = vector_flow(coupling, "reverse", 2)
    kx, kinit, kp, ks = jax.random.split(jax.random.PRNGKey(1), 4)
    x = jax.random.normal(kx, (64, 2)) * jnp.array([1.0, 0.7]) + jnp.array([0.5, -0.3])
    # A milder perturbation than elsewhere: larger ones give spiky spline densities
    # (bins down to min_bin_width) that a 0.05 grid cannot resolve.
    params = jax.jit(perturb, static_argnums=2)(jax.jit(model.init)(kinit, x), kp, 0.2)
    half, n = 9.0, 361  # spacing 0.05
    axis = jnp.linspace(-half, half, n)
    grid = jnp.stack(jnp.meshgrid(axis, axis), -1).reshape(-1, 2)

    @jax.jit
    def run(params):
        return jnp.exp(model.log_prob(params, None, grid)), model.sample(params, ks, 4000)

    density, samples = run(params)
    # The box must hold (almost) all the mass for the sum to be ~1: no sample of
    # 4000 lands outside it, so the mass outside is < 3/4000 (95% upper bound).
    assert float(jnp.max(jnp.abs(samples))) < half
    # Riemann sum of a smooth density with spacing h = 0.05: error O(h^2) << 1e-2.
    total = float(jnp.sum(density)) * float(axis[1] - axis[0]) ** 2
    assert total == pytest.approx(1.0, abs=1e-2)


def test_actnorm_init_and_loss_is_mean_nll():
    model, _ = vector_flow("affine", "reverse", 3)
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (256, 3)) + 2.0
    params = model.init(jax.random.PRNGKey(3), x)
    act = params["params"]["layers_0"]  # the first layer is ActNorm
    np.testing.assert_allclose(act["bias"], -jnp.mean(x, 0), atol=1e-5)
    np.testing.assert_allclose(act["log_scale"], -jnp.log(jnp.std(x, 0)), atol=1e-5)
    value, metrics = model.loss(params, None, x)
    np.testing.assert_allclose(value, -jnp.mean(model.log_prob(params, None, x)), rtol=1e-6)
    np.testing.assert_allclose(metrics["bits_per_dim"], value / (3 * math.log(2)), rtol=1e-6)


def test_training_reduces_nll():
    model, _ = vector_flow("affine", "reverse", 2)
    steps = 60
    optimizer, _ = train.make_optimizer(learning_rate=3e-3, total_steps=steps)

    def batch_fn(key, step):  # a correlated, shifted Gaussian that ActNorm alone cannot fit
        x = jax.random.normal(jax.random.fold_in(key, step), (128, 2))
        return jnp.stack([x[:, 0], 0.8 * x[:, 0] + 0.3 * x[:, 1] ** 2], 1)

    state = jax.jit(lambda k, x: train.init_state(model.init, optimizer, k, x))(
        jax.random.PRNGKey(4), batch_fn(jax.random.PRNGKey(5), 0))
    eval_x = batch_fn(jax.random.PRNGKey(6), 0)
    nll = jax.jit(lambda p: model.loss(p, None, eval_x)[0])
    before = nll(state.params)
    state, metrics = jax.jit(train.make_train_fn(model.loss, optimizer, steps_per_call=steps, batch_fn=batch_fn))(state)
    assert np.all(np.isfinite(metrics["loss"]))
    # 0.1 nats is far beyond the noise of a 128-point evaluation of a fixed model
    # difference; an update that does not train leaves the NLL unchanged.
    assert nll(state.params) < before - 0.1


def test_glow_inverts_and_log_det_matches_jacobian():
    kwargs = dict(data_shape=(8, 8, 1), num_scales=2, steps_per_scale=2, hidden=(8,), logit_alpha=0.05)
    model = realnvp.make_glow_model(**kwargs)
    bijection = realnvp.glow_bijection(**kwargs)
    kx, kinit, kp, ks = jax.random.split(jax.random.PRNGKey(7), 4)
    x = jax.random.uniform(kx, (4, 8, 8, 1), minval=0.02, maxval=0.98)
    params = jax.jit(perturb, static_argnums=2)(jax.jit(model.init)(kinit, x), kp, 0.3)

    @jax.jit
    def run(params, x):
        fwd, inv = bound_fns(bijection, params)
        z, ld = fwd(x)
        x_back, ld_inv = inv(z)
        slog = jacobian_log_dets(lambda v: fwd(v)[0], x[:1])
        return z, ld, x_back, ld_inv, slog, model.sample(params, ks, 2, temperature=0.7)

    z, ld, x_back, ld_inv, slog, samples = run(params, x)
    assert z.shape == (4, 64)
    np.testing.assert_allclose(x_back, x, atol=ATOL)
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ld[:1], slog, rtol=1e-5, atol=1e-3)
    assert samples.shape == (2, 8, 8, 1)
    # The inverse logit's range: (sigmoid(y) - alpha) / (1 - 2 alpha) for y in R,
    # closed in float32 where the sigmoid saturates.
    lo, hi = -0.05 / 0.9, 0.95 / 0.9
    assert lo - 1e-6 <= float(jnp.min(samples)) and float(jnp.max(samples)) <= hi + 1e-6


def test_shape_errors():
    model, _ = vector_flow("affine", "reverse", 2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)) + jnp.arange(4.0)[:, None])
    bad = jnp.zeros((4, 3))
    for call in (lambda: model.init(jax.random.PRNGKey(0), bad),
                 lambda: model.loss(params, None, bad),
                 lambda: model.log_prob(params, None, bad)):
        with pytest.raises(ValueError, match=r"\(2,\).*\(4, 3\)"):
            call()
    glow = realnvp.make_glow_model(data_shape=(8, 8, 1), num_scales=2, steps_per_scale=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"\(8, 8, 1\).*\(4, 8, 8, 2\)"):
        glow.init(jax.random.PRNGKey(0), jnp.zeros((4, 8, 8, 2)))
    with pytest.raises(ValueError, match="divisible"):
        realnvp.make_glow_model(data_shape=(6, 6, 1), num_scales=2, steps_per_scale=1, hidden=(4,))
    with pytest.raises(ValueError, match="coupling"):
        realnvp.make_realnvp_model(data_shape=(2,), num_layers=2, hidden=(4,), coupling="planar")
    with pytest.raises(ValueError, match=r"\(D,\)"):
        realnvp.make_realnvp_model(data_shape=(4, 4, 1), num_layers=2, hidden=(4,))
