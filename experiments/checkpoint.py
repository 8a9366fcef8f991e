"""Checkpoints of a TrainState with orbax: periodic, keep-last-N, atomic, resumable.

orbax writes each step into a temporary directory and renames it only once
complete, so a run killed mid-save leaves the previous checkpoint intact and no
half-written one is ever restored.
"""
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores a training state pytree under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3):
        directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self):
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, state) -> None:
        """Saves `state` at `step` and waits until it is committed to disk."""
        state = jax.device_get(state)
        self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, template, step: int | None = None):
        """Restores the latest (or a given) step into the structure of `template`;
        returns None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, jax.device_get(template))
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self):
        self._manager.close()
