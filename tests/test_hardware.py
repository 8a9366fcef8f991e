"""genjax.hardware: the measured matmul peak behind the MFU."""
import jax.numpy as jnp
import pytest

from genjax import hardware


def test_measure_peak_flops_times_a_small_matmul():
    peak = hardware.measure_peak_flops(size=64, dtype=jnp.float32, repeats=1)
    assert peak > 0 and peak < 1e17  # a positive, finite FLOP/s figure
    assert hardware.default_peak_size() in (2048, 8192)
    with pytest.raises(ValueError, match="precision"):
        hardware.measure_peak_flops(size=8, precision="tf32")
