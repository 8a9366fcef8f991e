"""Checkpoints of a TrainState with orbax: periodic, keep-last-N, atomic, verified.

Crash safety: orbax writes each step into a temporary directory and renames it
only once complete, so a run killed mid-save leaves the previous checkpoint
intact and no half-written one is ever restored.

Integrity: orbax does not notice bytes that change after the save (a flipped
bit or a block of zeros in a data file restores silently), and a missing or
truncated file surfaces as a long tensorstore traceback. So once orbax has
committed a step, `Checkpointer.save` writes `<step>/checksums.json`: the size and
SHA-256 of every file of the step, written atomically (temporary file, fsync,
rename). When a Checkpointer opens a workdir it checks the newest step against
it, then the next newest, until one is intact; the damaged ones newer than that
are moved to `<workdir>/checkpoints_damaged/<step>` (never deleted) with a
warning that names the step, the reason and where it went, and the run resumes
from the newest intact step. They are moved before orbax's manager lists the
directory, so its keep-last-N clean-up counts intact steps only and can never
delete the one the run resumes from because a damaged newer one exists. When no
step is intact the checkpoints are left where they are and `CheckpointError`
says why each one failed.

A step without checksums.json is one of two things. Newer than a step that has
one, it is a save interrupted between orbax's commit and the checksum write:
treated as damaged. Older than every step that has one (a workdir written before
checksums were recorded), it is restored with an `UnverifiedCheckpointWarning`.
Checksums cost one read of the step's files at save and at open, never anything
per training step.
"""
import hashlib
import itertools
import json
import os
import shutil
import warnings

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiments.logging import write_atomically

CHECKSUM_FILE = "checksums.json"
CHECKSUM_FORMAT = "genjax-checkpoint-checksums/1"
DAMAGED_DIR = "checkpoints_damaged"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """No intact checkpoint to restore, or a requested step failed its checksums."""


class DamagedCheckpointWarning(UserWarning):
    """A damaged step was skipped and moved aside; the run resumes from an older one."""


class UnverifiedCheckpointWarning(UserWarning):
    """A step written before checksums were recorded is restored without verification."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _step_files(step_dir: str) -> list[str]:
    """Paths (relative to step_dir, '/'-separated, sorted) of every file of the step
    except the checksum file itself and its temporary."""
    found = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), step_dir).replace(os.sep, "/")
            if not rel.startswith(CHECKSUM_FILE):
                found.append(rel)
    return sorted(found)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checksums(step_dir: str, step: int) -> None:
    """Writes `<step_dir>/checksums.json` (size and SHA-256 of every file) atomically:
    a reader sees either no checksum file or a complete one."""
    files = {}
    for rel in _step_files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    if not files:
        raise CheckpointError(f"checkpoint step {step} in {step_dir} has no files to checksum")
    record = {"format": CHECKSUM_FORMAT, "step": int(step), "files": files}
    write_atomically(os.path.join(step_dir, CHECKSUM_FILE), json.dumps(record, indent=1, sort_keys=True))
    _fsync_dir(step_dir)


def checksum_problem(step_dir: str, step: int) -> str | None:
    """Why the files of `step_dir` do not match its checksums.json, or None when
    they all do. The step must have a checksum file (see `has_checksums`)."""
    try:
        with open(os.path.join(step_dir, CHECKSUM_FILE)) as f:
            record = json.load(f)
        files = record["files"]
        if record.get("format") != CHECKSUM_FORMAT or not isinstance(files, dict) or not files:
            return f"{CHECKSUM_FILE} is not a {CHECKSUM_FORMAT} record"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{CHECKSUM_FILE} is unreadable ({type(err).__name__}: {err})"
    if record.get("step") != step:
        return f"{CHECKSUM_FILE} describes step {record.get('step')}, not step {step}"
    for rel, expected in sorted(files.items()):
        path = os.path.join(step_dir, rel)
        try:
            size = os.path.getsize(path)
            if size != expected["bytes"]:
                how = "truncated" if size < expected["bytes"] else "grown"
                return f"{rel} is {size} bytes, expected {expected['bytes']} ({how})"
            if _sha256(path) != expected["sha256"]:
                return f"{rel} has SHA-256 {_sha256(path)[:16]}..., expected {expected['sha256'][:16]}... (bytes changed on disk)"
        except FileNotFoundError:
            return f"{rel} is missing"
        except OSError as err:
            return f"{rel} is unreadable ({type(err).__name__}: {err})"
    return None


def has_checksums(step_dir: str) -> bool:
    return os.path.exists(os.path.join(step_dir, CHECKSUM_FILE))


def _step_dirs(directory: str) -> list[int]:
    """Steps with a committed directory (its name the step number) under `directory`,
    newest first; orbax's temporary directories of unfinished saves are not steps."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(name) for name in os.listdir(directory)
                   if name.isdigit() and os.path.isdir(os.path.join(directory, name))), reverse=True)


_barriers = itertools.count()


def _sync_processes(what: str) -> None:
    """A barrier across the processes of a multi-process run (no-op with one).
    Every process opens its Checkpointers in the same order, so the counter gives
    each barrier the same unique name everywhere."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(f"genjax_checkpoints_{what}_{next(_barriers)}")


def _to_host(leaf):
    """A host (numpy) copy of a state leaf, so that a checkpoint restores under any
    device count and process count. A leaf sharded over the devices of several
    processes (FSDP across hosts) is gathered first, in every process (a
    collective: each process passes the leaves in the same order)."""
    if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
        return multihost_utils.process_allgather(leaf, tiled=True)
    return jax.device_get(leaf)


class Checkpointer:
    """Saves and restores a training state pytree under `<workdir>/checkpoints`.

    Opening one checks the newest checkpoints and moves damaged ones aside (see the
    module docstring), so `latest_step()` is the newest intact step."""

    def __init__(self, workdir: str, *, keep: int = 3):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.damaged_directory = os.path.join(self.workdir, DAMAGED_DIR)
        self._verdicts: dict[int, str | None] = {}  # step -> None (intact) or why it is damaged
        self._warned_unverified: set[int] = set()
        self._set_aside_damaged()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -------------------------------------------------------------- verification

    def _problem(self, step: int, steps: list[int]) -> str | None:
        """Why `step` cannot be restored, or None. `steps`: every step on disk."""
        step_dir = os.path.join(self.directory, str(step))
        if has_checksums(step_dir):
            return checksum_problem(step_dir, step)
        older_verified = [s for s in steps if s < step and has_checksums(os.path.join(self.directory, str(s)))]
        if older_verified:
            return (f"it has no {CHECKSUM_FILE} although the older step {max(older_verified)} has one: "
                    f"the save was interrupted before its checksums were written")
        return None  # written before checksums were recorded: restored unverified

    def _verdict(self, step: int) -> str | None:
        if step not in self._verdicts:
            self._verdicts[step] = self._problem(step, _step_dirs(self.directory))
        return self._verdicts[step]

    def _set_aside_damaged(self) -> None:
        """Checks steps newest first until one is intact; moves the damaged ones
        newer than it to checkpoints_damaged/; raises CheckpointError, moving
        nothing, when none is intact. In a multi-process run every process checks
        the same files, all wait until all have checked, process 0 alone moves,
        and all wait for that before any opens orbax's manager."""
        steps = _step_dirs(self.directory)
        damaged = []
        intact = None
        for step in steps:
            problem = self._problem(step, steps)
            self._verdicts[step] = problem
            if problem is None:
                intact = step
                break
            damaged.append((step, problem))
        _sync_processes("checked")
        try:
            self._report_damaged(damaged, intact)
        finally:
            _sync_processes("moved")

    def _report_damaged(self, damaged, intact) -> None:
        if not damaged:
            return
        if intact is None:
            reasons = "; ".join(f"step {s}: {p}" for s, p in damaged)
            raise CheckpointError(
                f"no intact checkpoint in {self.directory} ({reasons}). They are left in place; "
                f"move or delete them to train from scratch, or restore a copy.")
        for step, problem in damaged:
            where = self._move_aside(step) if jax.process_index() == 0 else self.damaged_directory
            warnings.warn(f"checkpoint step {step} is damaged ({problem}); moved it to {where} and "
                          f"resuming from step {intact}, the newest intact checkpoint",
                          DamagedCheckpointWarning, stacklevel=4)

    def _move_aside(self, step: int) -> str:
        """Moves step's directory to checkpoints_damaged/<step> (<step>.1, ... when
        that exists); returns the new path."""
        os.makedirs(self.damaged_directory, exist_ok=True)
        target, n = os.path.join(self.damaged_directory, str(step)), 0
        while os.path.exists(target):
            n += 1
            target = os.path.join(self.damaged_directory, f"{step}.{n}")
        shutil.move(os.path.join(self.directory, str(step)), target)
        self._verdicts.pop(step, None)
        return target

    # -------------------------------------------------------------- the manager

    def latest_step(self):
        """The newest step on disk: intact, since damaged newer ones were moved aside
        when this Checkpointer opened the workdir."""
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, state) -> None:
        """Saves `state` at `step`, waits until orbax has committed it, then records
        the checksums of its files (process 0, which finalizes the step). Every
        process of a multi-process run calls it (orbax's save is collective) and
        returns only once the checksums are written: a process that went on to open
        the workdir before that would take the step for an interrupted save."""
        state = jax.tree_util.tree_map(_to_host, state)
        self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            write_checksums(os.path.join(self.directory, str(int(step))), int(step))
        _sync_processes("saved")
        self._verdicts[int(step)] = None

    def restore(self, template, step: int | None = None):
        """Restores the latest (or a given) step into the structure of `template`;
        returns None when there is no checkpoint. A step that fails its checksums
        raises CheckpointError naming the step and the reason."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        problem = self._verdict(step)
        step_dir = os.path.join(self.directory, str(step))
        if problem is not None:
            raise CheckpointError(f"checkpoint step {step} in {step_dir} is damaged: {problem}")
        if not has_checksums(step_dir) and step not in self._warned_unverified:
            self._warned_unverified.add(step)
            warnings.warn(f"checkpoint step {step} in {step_dir} has no {CHECKSUM_FILE} (written before "
                          f"checksums were recorded); restoring it unverified",
                          UnverifiedCheckpointWarning, stacklevel=2)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, jax.device_get(template))
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self):
        self._manager.close()
