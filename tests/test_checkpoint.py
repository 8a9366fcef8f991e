"""Checkpoint integrity (experiments/checkpoint.py): every kind of damage to the
newest step falls back to the previous one with a warning, the damaged step is
moved aside and kept, no intact step is one clear error, and a resumed run is
still bit-identical to one that never stopped."""
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import checkpoint, run_loop
from experiments.checkpoint import (CheckpointError, Checkpointer, DamagedCheckpointWarning,
                                    UnverifiedCheckpointWarning)
from experiments.logging import read_metrics
from genjax import train


def _state(offset: float):
    """A state big enough that its data file holds more than a 4 KB block."""
    key = jax.random.key(0)
    return {"w": jax.random.normal(key, (64, 64)) + offset, "b": jnp.full((7,), offset), "step": jnp.int32(offset)}


def _data_file(workdir, step) -> str:
    """The largest file of the step: the one holding the arrays."""
    root = os.path.join(workdir, "checkpoints", str(step))
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    return max(files, key=os.path.getsize)


def _rewrite(path, change):
    data = bytearray(open(path, "rb").read())
    change(data)
    with open(path, "wb") as f:
        f.write(bytes(data))


def _flip_byte(data):
    data[len(data) // 2] ^= 0x01


def _zero_block(data):
    assert len(data) > 4096 + 512, len(data)
    data[512:512 + 4096] = bytes(4096)


DAMAGE = {
    "truncated data file": (lambda wd, s: os.truncate(_data_file(wd, s), os.path.getsize(_data_file(wd, s)) // 2),
                            r"is \d+ bytes, expected \d+ \(truncated\)"),
    "deleted data file": (lambda wd, s: os.remove(_data_file(wd, s)), r"is missing"),
    "deleted manifest.ocdbt": (lambda wd, s: os.remove(os.path.join(wd, "checkpoints", str(s), "default",
                                                                      "manifest.ocdbt")),
                               r"default/manifest.ocdbt is missing"),
    "flipped byte": (lambda wd, s: _rewrite(_data_file(wd, s), _flip_byte), r"bytes changed on disk"),
    "zeroed 4 KB block": (lambda wd, s: _rewrite(_data_file(wd, s), _zero_block), r"bytes changed on disk"),
    "deleted checksum file": (lambda wd, s: os.remove(os.path.join(wd, "checkpoints", str(s), "checksums.json")),
                              r"no checksums.json although the older step 5 has one"),
    "invalid checksum file": (lambda wd, s: open(os.path.join(wd, "checkpoints", str(s), "checksums.json"),
                                                 "w").write('{"files": '),
                              r"checksums.json is unreadable"),
}


def _save(workdir, steps, keep=3):
    ckpt = Checkpointer(workdir, keep=keep)
    for s in steps:
        ckpt.save(s, _state(s))
    ckpt.close()


def _assert_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checksums_list_every_file_of_the_step(tmp_path):
    wd = str(tmp_path)
    _save(wd, [5])
    step_dir = os.path.join(wd, "checkpoints", "5")
    record = json.load(open(os.path.join(step_dir, "checksums.json")))
    on_disk = sorted(os.path.relpath(os.path.join(d, f), step_dir) for d, _, fs in os.walk(step_dir) for f in fs)
    assert sorted([*record["files"], "checksums.json"]) == on_disk
    assert record["step"] == 5 and "default/manifest.ocdbt" in record["files"]
    assert checkpoint.checksum_problem(step_dir, 5) is None


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, kind):
    wd = str(tmp_path)
    _save(wd, [5, 10])
    damage, reason = DAMAGE[kind]
    damage(wd, 10)
    with pytest.warns(DamagedCheckpointWarning, match=rf"checkpoint step 10 is damaged \(.*{reason}.*\); moved it "
                                                       rf"to .*checkpoints_damaged/10 and resuming from step 5"):
        ckpt = Checkpointer(wd)
    try:
        assert ckpt.latest_step() == 5 and ckpt.all_steps() == [5]
        _assert_equal(ckpt.restore(_state(0)), _state(5))
    finally:
        ckpt.close()
    assert os.listdir(os.path.join(wd, "checkpoints_damaged")) == ["10"]  # kept, not deleted
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["5"]


def test_no_intact_step_is_one_clear_error_and_moves_nothing(tmp_path):
    wd = str(tmp_path)
    _save(wd, [5, 10])
    DAMAGE["flipped byte"][0](wd, 10)
    DAMAGE["deleted data file"][0](wd, 5)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*checkpoints \(step 10: .*bytes changed on "
                                              r"disk\); step 5: .* is missing\)\. They are left in place"):
        Checkpointer(wd)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "5"]
    assert not os.path.exists(os.path.join(wd, "checkpoints_damaged"))


def test_damaged_step_is_never_deleted_by_keep_last_n(tmp_path):
    """keep=2, newest of [5, 10] damaged: the run resumes from 5 and saves 10, 15, 20;
    orbax's clean-up drops 5 and 10 in turn, never the step it resumed from before
    a newer intact one exists, and the damaged copy stays in checkpoints_damaged/."""
    wd = str(tmp_path)
    _save(wd, [5, 10], keep=2)
    DAMAGE["zeroed 4 KB block"][0](wd, 10)
    with pytest.warns(DamagedCheckpointWarning):
        ckpt = Checkpointer(wd, keep=2)
    try:
        assert ckpt.all_steps() == [5]
        ckpt.save(10, _state(10))
        assert ckpt.all_steps() == [5, 10]
        ckpt.save(15, _state(15))
        assert ckpt.all_steps() == [10, 15]
    finally:
        ckpt.close()
    assert os.listdir(os.path.join(wd, "checkpoints_damaged")) == ["10"]
    DAMAGE["flipped byte"][0](wd, 15)
    with pytest.warns(DamagedCheckpointWarning, match=r"moved it to .*checkpoints_damaged/15 and resuming from "
                                                       r"step 10"):
        Checkpointer(wd, keep=2).close()
    _save(wd, [15], keep=2)
    DAMAGE["truncated data file"][0](wd, 15)  # the same step damaged again: its copy goes beside the first
    with pytest.warns(DamagedCheckpointWarning, match=r"checkpoints_damaged/15.1 and resuming from step 10"):
        Checkpointer(wd, keep=2).close()
    assert sorted(os.listdir(os.path.join(wd, "checkpoints_damaged"))) == ["10", "15", "15.1"]


def test_an_older_damaged_step_asked_for_by_number_is_an_error(tmp_path):
    wd = str(tmp_path)
    _save(wd, [5, 10])
    DAMAGE["flipped byte"][0](wd, 5)
    ckpt = Checkpointer(wd)  # the newest step is intact: nothing is checked or moved beyond it
    try:
        _assert_equal(ckpt.restore(_state(0)), _state(10))
        with pytest.raises(CheckpointError, match=r"checkpoint step 5 in .* is damaged: .*bytes changed on disk"):
            ckpt.restore(_state(0), 5)
    finally:
        ckpt.close()


def test_checkpoints_written_before_checksums_restore_unverified(tmp_path):
    wd = str(tmp_path)
    _save(wd, [5, 10])
    for s in (5, 10):
        os.remove(os.path.join(wd, "checkpoints", str(s), "checksums.json"))
    ckpt = Checkpointer(wd)
    try:
        assert ckpt.latest_step() == 10
        with pytest.warns(UnverifiedCheckpointWarning, match=r"step 10 .* has no checksums.json \(written before "
                                                              r"checksums were recorded\); restoring it unverified"):
            _assert_equal(ckpt.restore(_state(0)), _state(10))
        ckpt.save(15, _state(15))  # new steps carry checksums; the old ones stay restorable
    finally:
        ckpt.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = Checkpointer(wd)
        ckpt.close()
    assert ckpt.latest_step() == 15


# ----------------------------------------------------------------------------- through the run loop

def _loss(params, key, batch):
    return jnp.mean((batch @ params["w"] - 1.0) ** 2), {}


def _run(workdir, **kwargs):
    tx = optax.adam(1e-2)
    state = train.init_state(lambda k, b: {"w": jax.random.normal(k, (3,))}, tx, jax.random.key(0),
                             jnp.zeros((4, 3)))
    batch_fn = lambda k, s: jax.random.normal(jax.random.fold_in(k, s), (4, 3))  # noqa: E731
    make = lambda mesh: jax.jit(train.make_train_fn(_loss, tx, steps_per_call=5, batch_fn=batch_fn, mesh=mesh))  # noqa: E731
    return run_loop.run(state, make, num_steps=20, steps_per_call=5, workdir=workdir, checkpoint_every=5,
                        **kwargs)


def test_run_resumes_from_the_newest_intact_step_bit_identically(tmp_path):
    whole, _ = _run(str(tmp_path / "whole"))
    wd = str(tmp_path / "damaged")
    _run(wd, stop_after=15)
    DAMAGE["flipped byte"][0](wd, 15)
    with pytest.warns(DamagedCheckpointWarning, match=r"step 15 is damaged .* resuming from step 10"):
        resumed, metrics = _run(wd)
    assert metrics["loss"].shape == (10,)  # steps 10..19 ran again
    _assert_equal((whole.params, whole.opt_state, whole.ema_params), (resumed.params, resumed.opt_state,
                                                                       resumed.ema_params))
    assert [r["step"] for r in read_metrics(os.path.join(wd, "metrics.jsonl"))] == [5, 10, 15, 20]
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "15", "20"]
    assert os.listdir(os.path.join(wd, "checkpoints_damaged")) == ["15"]
