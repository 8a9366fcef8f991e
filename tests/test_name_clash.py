"""`genjax` is also the import name of an unrelated published package: the glue
refuses to run on top of it with a message that says so (experiments/__init__.py)."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def _import_experiments(pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-c", "import experiments"], cwd=pythonpath[-1],
                          env=env, capture_output=True, text=True, timeout=60)


def test_the_glue_refuses_another_package_named_genjax(tmp_path):
    other = tmp_path / "site" / "genjax"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text('"""A probabilistic-programming library."""\n')
    glue_only = tmp_path / "glue"
    glue_only.mkdir()
    (glue_only / "experiments").symlink_to(REPO / "experiments")
    proc = _import_experiments([tmp_path / "site", glue_only])
    assert proc.returncode == 1
    assert "is not this project's math core (it has no genjax.diffusion)" in proc.stderr
    assert str(other) in proc.stderr


def test_the_glue_imports_with_this_projects_genjax():
    proc = _import_experiments([REPO])
    assert proc.returncode == 0, proc.stderr


def test_every_script_of_the_glue_imports_into_one_process():
    # absl flags are global: two scripts defining the same flag name cannot both be imported
    # (the tests import several); shared names go through main.define_num / define_path_flag
    code = ("import importlib, pkgutil, experiments\n"
            "for m in pkgutil.iter_modules(experiments.__path__):\n"
            "    importlib.import_module('experiments.' + m.name)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
