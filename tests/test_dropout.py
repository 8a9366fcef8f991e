"""Dropout with a traced rate: the same numbers as with the concrete rate."""
import jax
import jax.numpy as jnp
import numpy as np

from genjax.nn.dropout import Dropout


def apply(rate, x, key):
    return Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": key})


def test_traced_rate_equals_concrete_rate_and_traced_zero_is_the_identity():
    x = jax.random.normal(jax.random.key(0), (64, 32))
    key = jax.random.key(1)
    traced = jax.jit(apply)
    for rate in (0.0, 0.3):
        got, want = traced(jnp.float32(rate), x, key), apply(rate, x, key)
        # The same mask; x / keep may round differently compiled (1 ulp), hence rtol.
        np.testing.assert_array_equal(got == 0, want == 0)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(traced(jnp.float32(0.0), x, key), x)
    # Rate 0.3: about 30% of entries dropped (binomial sd over 2048 entries ~1%),
    # the kept ones scaled by 1 / 0.7, so the mean is preserved in expectation.
    y = apply(0.3, x, key)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - 0.3) < 0.04
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / jnp.float32(0.7), rtol=1e-6)
    # Deterministic (evaluation): untouched, and no RNG needed.
    np.testing.assert_array_equal(Dropout(0.3).apply({}, x, deterministic=True), x)
