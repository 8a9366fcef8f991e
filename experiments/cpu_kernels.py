"""Builds and registers genjax's C++ CPU kernels (XLA FFI custom calls).

`register()` compiles experiments/kernels/*.cc (causal attention, LayerNorm,
bias + GELU)
with the system C++ compiler ($CXX, else g++ or c++) into one library in a cache
folder ($GENJAX_KERNEL_CACHE, else ~/.cache/genjax/kernels), once per sources,
flags, compiler and CPU (the build targets this CPU: -march=native), loads it and
registers the FFI targets that `genjax.nn.cpu_kernels` calls. Without a
compiler, or if the build fails, it returns False and the reason, and
`kernel_options` keeps XLA's versions: the kernels are a speed-up, never a
requirement.
"""
import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax

from genjax.nn import cpu_kernels

SOURCES = tuple(pathlib.Path(__file__).resolve().parent / "kernels" / name
                for name in ("causal_attention.cc", "layer_norm.cc", "bias_gelu.cc"))
HEADER = SOURCES[0].parent / "common.h"
SYMBOLS = {  # FFI target -> the handler the library exports
    cpu_kernels.ATTENTION_FORWARD: "GenjaxCausalAttentionForward",
    cpu_kernels.ATTENTION_BACKWARD: "GenjaxCausalAttentionBackward",
    cpu_kernels.PACKED_ATTENTION_FORWARD: "GenjaxPackedCausalAttentionForward",
    cpu_kernels.PACKED_ATTENTION_BACKWARD: "GenjaxPackedCausalAttentionBackward",
    cpu_kernels.LAYER_NORM_FORWARD: "GenjaxLayerNormForward",
    cpu_kernels.LAYER_NORM_BACKWARD: "GenjaxLayerNormBackward",
    cpu_kernels.BIAS_GELU_FORWARD: "GenjaxBiasGeluForward",
    cpu_kernels.BIAS_GELU_BACKWARD: "GenjaxBiasGeluBackward",
}
FLAGS = ("-O3", "-march=native", "-ffast-math", "-std=c++17", "-shared", "-fPIC", "-w", "-pthread")
_registered: dict = {}  # one build and registration per process


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GENJAX_KERNEL_CACHE") or pathlib.Path.home() / ".cache" / "genjax" / "kernels")


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return os.uname().machine


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(compiler: str) -> pathlib.Path:
    """The compiled library, built now unless the cache has it; raises on a failed build."""
    include = jax.ffi.include_dir()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join(
        [*(src.read_text() for src in (*SOURCES, HEADER)), " ".join(FLAGS), version, _cpu_signature(), include]
    ).encode()).hexdigest()[:16]
    path = cache_dir() / f"genjax_cpu_kernels-{key}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, f"-I{include}", *map(str, SOURCES), "-o", tmp],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on experiments/kernels:\n{result.stderr[-2000:]}")
        os.replace(tmp, path)  # atomic: concurrent builds never see half a library
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def register() -> tuple[bool, str]:
    """(True, library path) once the kernel's FFI targets are registered, else (False, why)."""
    if "result" not in _registered:
        _registered["result"] = _register()
    return _registered["result"]


def _register() -> tuple[bool, str]:
    if jax.default_backend() != "cpu":
        return False, f"the default backend is {jax.default_backend()}, not cpu"
    compiler = _compiler()
    if compiler is None:
        return False, "no C++ compiler (set CXX, or install g++)"
    try:
        path = build(compiler)
        lib = ctypes.cdll.LoadLibrary(str(path))
    except (RuntimeError, OSError) as e:
        return False, str(e)
    for target, symbol in SYMBOLS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return True, str(path)


def kernel_options(attention: str = "auto", layer_norm: str = "auto", gelu: str = "auto") -> dict:
    """The Transformer's `attention`, `layer_norm` and `gelu` for config values of those names.

    "auto" becomes "cpu_kernel" on a CPU where the kernels are registered (else
    attention stays "auto", LayerNorm and GELU are "xla"); asking for "cpu_kernel"
    where the kernels cannot be built is an error that says why.
    """
    on_cpu = jax.default_backend() == "cpu"
    if "cpu_kernel" in (attention, layer_norm, gelu):
        ok, why = register()
        if not ok:
            raise ValueError(f"'cpu_kernel' needs the compiled CPU kernels, which are unavailable: {why}")
    use = on_cpu and "auto" in (attention, layer_norm, gelu) and register()[0]
    xla_unless_used = {"auto": "cpu_kernel" if use else "xla"}
    return {"attention": "cpu_kernel" if attention == "auto" and use else attention,
            "layer_norm": xla_unless_used.get(layer_norm, layer_norm),
            "gelu": xla_unless_used.get(gelu, gelu)}
