"""Test set-up: 8 forced host devices and the persistent compilation cache.

On a machine with a GPU the tests run there; the host devices are still forced
so that multi-device code can be checked on CPU everywhere.

Both must be configured before JAX is imported anywhere.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

_CACHE_DIR = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Tests check float32 math; GPUs would otherwise run float32 matmuls in TF32.
jax.config.update("jax_default_matmul_precision", "highest")
