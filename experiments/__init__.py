"""The glue: command lines, registries, the run loop, checkpoints, plots.

`genjax` is also the import name of an unrelated published package (a
probabilistic-programming library). Both install as the distribution `genjax`,
so pip replaces one with the other; if the `genjax` that Python finds is not
this project's math core, importing the glue stops here with a clear message
instead of failing later on a missing module.
"""
import importlib.util as _util
import os as _os


def _check_genjax() -> None:
    spec = _util.find_spec("genjax")  # finds the package without importing it (no JAX start-up)
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    if not any(_os.path.isdir(_os.path.join(p, "diffusion")) for p in places):
        found = ", ".join(places) or "nowhere"
        raise ImportError(
            f"the 'genjax' package found ({found}) is not this project's math core (it has no "
            f"genjax.diffusion): another package of the same name, the probabilistic-programming "
            f"library, is installed in this environment. Use a separate virtual environment for this "
            f"project (make demo creates .venv), or `pip uninstall genjax` and reinstall this one with "
            f"`pip install -e .`")


_check_genjax()
