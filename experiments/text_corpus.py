"""Reads the offline text corpus: the running Python's standard-library sources.

Every `*.py` file under the stdlib root, read as bytes, minus paths with an
excluded component (see genjax.data.text.EXCLUDED_DIRS), split by file with
genjax.data.text.is_validation. Files are concatenated in sorted path order,
so the byte streams are the same on every run of the same Python.
"""
import pathlib
import sysconfig

import numpy as np

from genjax.data import text


def list_stdlib_files(root: str | pathlib.Path | None = None) -> list[str]:
    """Sorted posix paths, relative to `root` (default: the stdlib), of the corpus files."""
    root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    rels = (p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())
    return sorted(r for r in rels if not text.is_excluded(r))


def read_stdlib_corpus(root: str | pathlib.Path | None = None) -> dict:
    """{'train': uint8 array, 'validation': uint8 array, 'files': {split: [paths]}}."""
    root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    files = {"train": [], "validation": []}
    for rel in list_stdlib_files(root):
        files[text.split_of(rel)].append(rel)
    if not files["train"] or not files["validation"]:
        raise ValueError(
            f"corpus under {root} has {len(files['train'])} train and "
            f"{len(files['validation'])} validation files; expected both non-empty"
        )
    out = {"files": files}
    for split, rels in files.items():
        data = b"".join((root / rel).read_bytes() for rel in rels)
        out[split] = np.frombuffer(data, dtype=np.uint8)
    return out
