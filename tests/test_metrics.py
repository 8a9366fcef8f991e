import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import metrics


def test_sliced_wasserstein_of_a_shift_is_its_length_over_root_d():
    """Shifting a set by m moves every projection by theta.m, so SW_2 = sqrt(E (theta.m)^2)
    = |m| / sqrt(D) exactly in expectation over directions (Monte Carlo over 20000)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (500, 4))
    m = jnp.array([1.0, -2.0, 0.5, 0.0])
    swd = metrics.sliced_wasserstein(jax.random.PRNGKey(1), x, x + m, num_projections=20_000)
    np.testing.assert_allclose(float(swd), float(jnp.linalg.norm(m) / 2.0), rtol=0.02)
    assert float(metrics.sliced_wasserstein(jax.random.PRNGKey(1), x, x)) == 0.0


def test_sliced_wasserstein_handles_unequal_sizes_and_checks_dims():
    x = jax.random.normal(jax.random.PRNGKey(0), (400, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (1000, 2))
    assert float(metrics.sliced_wasserstein(jax.random.PRNGKey(2), x, y)) < 0.15
    with pytest.raises(ValueError, match="dimensions 2 and 3"):
        metrics.sliced_wasserstein(jax.random.PRNGKey(2), x, jnp.zeros((5, 3)))


def test_mmd_separates_distributions():
    x = jax.random.normal(jax.random.PRNGKey(0), (500, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (500, 2))
    same = float(metrics.mmd(x, y))
    shifted = float(metrics.mmd(x, y + 1.0))
    assert abs(same) < 0.01 and shifted > 0.1


def test_total_variation():
    assert float(metrics.total_variation([0.5, 0.5], [1.0, 0.0])) == 0.5
