import math

import jax
import jax.numpy as jnp
import numpy as np

from genjax import core
from genjax.core import bits_per_dim
from genjax.diffusion import likelihood


def test_dequantized_nll_of_the_uniform_model_is_d_log_levels():
    """A model uniform on [0, 1]^D has log p(y) = 0, so the discrete NLL is D log L
    nats, i.e. log2(L) bits per dimension."""
    levels, dim = 17, 64
    x_int = jax.random.randint(jax.random.PRNGKey(0), (10, dim), 0, levels)
    y, log_bin_volume = likelihood.uniform_dequantize(jax.random.PRNGKey(1), x_int, levels)
    assert bool(jnp.all((y >= 0) & (y < 1)))
    assert bool(jnp.all(jnp.floor(y * levels) == x_int))  # each y stays in its data cell
    nll = likelihood.discrete_nll(jnp.zeros(10), log_bin_volume)
    np.testing.assert_allclose(nll, dim * math.log(levels), rtol=1e-6)
    np.testing.assert_allclose(bits_per_dim(nll, dim), math.log2(levels), rtol=1e-6)


def test_dequantization_into_a_scaled_range():
    """Data mapped to [-1, 1]: cells are 2/L wide, so the log-volume is D log(2/L)."""
    x_int = jnp.array([[0, 16]])
    y, log_bin_volume = likelihood.uniform_dequantize(jax.random.PRNGKey(0), x_int, 17, low=-1.0, high=1.0)
    np.testing.assert_allclose(log_bin_volume, 2 * math.log(2 / 17), rtol=1e-6)
    assert -1.0 <= float(y[0, 0]) < -1.0 + 2 / 17 and 1.0 - 2 / 17 <= float(y[0, 1]) < 1.0


def test_loop_free_interp_equals_jnp_interp():
    # Random knots with a repeated one, queries inside, outside and on the knots.
    rng = np.random.default_rng(0)
    xp = np.sort(rng.normal(size=40)).astype(np.float32)
    xp[10] = xp[11]
    fp = rng.normal(size=40).astype(np.float32)
    x = np.concatenate([rng.normal(scale=2.0, size=500), xp, [xp[0] - 1, xp[-1] + 1]]).astype(np.float32)
    got = jax.jit(core.interp)(x, xp, fp)
    np.testing.assert_allclose(got, jnp.interp(x, xp, fp), rtol=1e-6, atol=1e-6)
