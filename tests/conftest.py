"""Test set-up: 8 forced host devices and the persistent compilation cache.

On a machine with a GPU the tests run there; the host devices are still forced
so that multi-device code can be checked on CPU everywhere.

Both must be configured before JAX is imported anywhere. Tests that need 8
devices take the `eight_devices` fixture: on an accelerator with fewer they skip.
"""
import os
import pathlib

# Deterministic GPU kernels (scatter-add without atomics, deterministic conv
# algorithms): the tests compare resumed and retrained runs bit for bit.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_gpu_deterministic_ops=true")

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE_DIR = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Tests check float32 math; GPUs would otherwise run float32 matmuls in TF32.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def eight_devices():
    """The first 8 devices: the forced host devices on CPU; skips on a smaller accelerator."""
    if jax.default_backend() != "cpu" and jax.device_count() < 8:
        pytest.skip(f"needs 8 devices; this {jax.default_backend()} has {jax.device_count()}")
    assert jax.device_count() >= 8, "tests/conftest.py forces 8 host devices"
    return jax.devices()[:8]
