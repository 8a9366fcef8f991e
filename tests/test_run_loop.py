"""The one run loop (experiments/run_loop.py): resume, the divergence guard on
every signal, the log on resume, ensembles."""
import json
import os
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

from configs import toy_vpsde
from experiments import ablate, main, run_loop
from experiments.logging import read_metrics
from genjax import train


def _stateful_loss(params, key, batch, model_state):
    """Least squares whose model state keeps a running sum of the batches seen."""
    r = batch @ params["w"] - 1.0
    return jnp.mean(r**2), ({}, {"seen": model_state["seen"] + batch.sum(0)})


def _state():
    tx = optax.adam(1e-2)
    init = lambda k, b: {"w": jax.random.normal(k, (3,))}  # noqa: E731
    return tx, train.init_state(init, tx, jax.random.key(0), jnp.zeros((4, 3)),
                                init_model_state=lambda k, b: {"seen": jnp.zeros(3)})


def _make_step(tx, loss=_stateful_loss):
    batch_fn = lambda k, s: jax.random.normal(jax.random.fold_in(k, s), (4, 3))  # noqa: E731
    return lambda mesh: jax.jit(train.make_train_fn(loss, tx, steps_per_call=5, batch_fn=batch_fn, mesh=mesh),
                                donate_argnums=0)


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    tx, state = _state()
    whole, _ = run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5,
                            workdir=str(tmp_path / "whole"), checkpoint_every=10)
    tx, state = _state()
    run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5, workdir=str(tmp_path / "cut"),
                 checkpoint_every=10, stop_after=10)
    tx, state = _state()  # a fresh process: the loop restores step 10 from the workdir
    resumed, metrics = run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5,
                                    workdir=str(tmp_path / "cut"), checkpoint_every=10)
    assert metrics["loss"].shape == (10,)  # only the remaining 10 steps ran
    assert int(resumed.step) == 20
    for a, b in zip(jax.tree_util.tree_leaves((whole.params, whole.model_state, whole.opt_state)),
                    jax.tree_util.tree_leaves((resumed.params, resumed.model_state, resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [r["step"] for r in read_metrics(str(tmp_path / "cut" / "metrics.jsonl"))]
    assert steps == [5, 10, 15, 20]


def test_guard_names_the_step_and_the_checkpoint(tmp_path):
    def exploding(params, key, batch, model_state):
        loss, aux = _stateful_loss(params, key, batch, model_state)
        return jnp.where(jnp.sum(model_state["seen"] != 0) > 0, jnp.nan, loss), aux

    tx, state = _state()
    with pytest.raises(FloatingPointError, match=r"^loss is nan at step 1; stopping without saving or logging this "
                                                 r"state. No checkpoint was written yet in "):
        run_loop.run(state, _make_step(tx, exploding), num_steps=10, steps_per_call=5,
                     workdir=str(tmp_path), checkpoint_every=5)


def test_steps_must_divide_into_calls():
    with pytest.raises(ValueError, match=r"train.num_steps \(12\) and train.checkpoint_every \(5\) must be "
                                         r"multiples of train.steps_per_call \(5\)"):
        run_loop.check_steps(12, 5, 5)


def test_ablation_keys_of_group_learning_rates():
    assert ablate.injected_name("optim.learning_rate") == "learning_rate"
    assert ablate.injected_name("optim.critic.learning_rate") == "critic.learning_rate"
    assert ablate.injected_name("optim.generator.weight_decay") == "generator.weight_decay"
    assert ablate.injected_name("optim.ema_decay") is None
    assert ablate.injected_name("model.learning_rate") is None


# ----------------------------------------------------------------------------- the guard on every signal

@jax.custom_vjp
def _infinite_gradient_if(w, on):
    """The identity, whose gradient is infinite where `on`: a finite loss with an
    infinite gradient norm."""
    return w


_infinite_gradient_if.defvjp(lambda w, on: (w, on), lambda on, g: (jnp.where(on, jnp.inf, g), None))

_BAD_STEP = 7  # inside the second call (steps 5..9); step 5 is checkpointed


def _flagged_batch(key, s, bad_index=_BAD_STEP):
    """Batch number s, flagged when it is the one at which the tests break something
    (with one update per step, the batch of step s is number s)."""
    return {"x": jax.random.normal(jax.random.fold_in(key, s), (8, 3)), "bad": jnp.full((8,), s == bad_index)}


def _least_squares(w, batch):
    return jnp.mean((batch["x"] @ _infinite_gradient_if(w, jnp.any(batch["bad"])) - 1.0) ** 2)


def _run_flagged(tmp_path, loss, tx, init, batch_fn=_flagged_batch):
    state = train.init_state(init, tx, jax.random.key(0), None)
    make = lambda mesh: jax.jit(train.make_train_fn(loss, tx, steps_per_call=5, batch_fn=batch_fn,  # noqa: E731
                                                    mesh=mesh))
    return run_loop.run(state, make, num_steps=20, steps_per_call=5, workdir=str(tmp_path), checkpoint_every=5)


def _assert_stopped_before_saving(tmp_path):
    """Nothing of the bad call was saved or logged: checkpoint 5 is the newest, and
    its parameters are finite."""
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [5]


def test_guard_stops_at_an_infinite_gradient_norm(tmp_path):
    loss = lambda params, key, batch: (_least_squares(params["w"], batch), {})  # noqa: E731
    init = lambda k, b: {"w": jax.random.normal(k, (3,))}  # noqa: E731
    with pytest.raises(FloatingPointError, match=rf"^grad_norm is inf at step {_BAD_STEP}; stopping without saving "
                                                 rf"or logging this state. The newest intact checkpoint is step 5 in "):
        _run_flagged(tmp_path, loss, optax.sgd(1e-2), init)
    _assert_stopped_before_saving(tmp_path)


@pytest.mark.parametrize("bad_step", [9, 7])
def test_guard_stops_at_a_non_finite_parameter(tmp_path, bad_step):
    """An update to infinity (a learning rate of inf at one step) with a finite loss
    and gradient. At the last step of a call (9) only the call's params_finite flag
    sees it; earlier (7), the next step's loss does."""
    loss = lambda params, key, batch: (jnp.mean((batch["x"] @ params["w"] - 1.0) ** 2), {})  # noqa: E731
    init = lambda k, b: {"w": jax.random.normal(k, (3,))}  # noqa: E731
    tx = optax.sgd(lambda count: jnp.where(count == bad_step, jnp.inf, 1e-2))
    signals = {9: r"a parameter is not finite after the update at step 9 \(parameters are checked at the end of "
                  r"each call; this one ran steps 5 to 9\)",
               7: r"loss is (inf|nan); grad_norm is (inf|nan) at step 8"}[bad_step]
    with pytest.raises(FloatingPointError, match=rf"^{signals}; stopping .* newest intact checkpoint is step 5 in "):
        _run_flagged(tmp_path, loss, tx, init)
    _assert_stopped_before_saving(tmp_path)


def test_guard_names_the_group_whose_gradient_norm_is_infinite(tmp_path):
    losses = {"a": lambda params, key, batch: (jnp.mean((batch["x"] @ params["a"] - 1.0) ** 2), {}),
              "b": lambda params, key, batch: (_least_squares(params["b"], batch), {})}
    init = lambda k, b: {"a": jax.random.normal(k, (3,)), "b": jnp.ones(3)}  # noqa: E731
    with pytest.raises(FloatingPointError, match=rf"^grad_norm is inf; b/grad_norm is inf at step {_BAD_STEP}; "):
        # Two updates per step, a then b: b's update in step s takes batch number 2 s + 1.
        _run_flagged(tmp_path, losses, {"a": optax.sgd(1e-2), "b": optax.sgd(1e-2)}, init,
                     batch_fn=lambda key, s: _flagged_batch(key, s, bad_index=2 * _BAD_STEP + 1))
    _assert_stopped_before_saving(tmp_path)


def test_guard_without_a_workdir_says_there_are_no_checkpoints():
    loss = lambda params, key, batch: (jnp.mean(batch["x"] @ params["w"]) / 0.0, {})  # noqa: E731
    tx = optax.sgd(1e-2)
    state = train.init_state(lambda k, b: {"w": jnp.zeros(3)}, tx, jax.random.key(0), None)
    make = lambda mesh: jax.jit(train.make_train_fn(loss, tx, steps_per_call=5, batch_fn=_flagged_batch))  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"^loss is nan; grad_norm is nan at step 0; .* This run keeps no "
                                                 r"checkpoints \(no workdir\)\. "):
        run_loop.run(state, make, num_steps=10, steps_per_call=5)


def _ensemble(learning_rates, guard):
    tx, _ = train.make_optimizer(learning_rate=1e-2, total_steps=10, schedule="constant")
    init = lambda k, b: {"w": jax.random.normal(k, (3,))}  # noqa: E731
    keys = jax.random.split(jax.random.key(0), len(learning_rates))
    states = train.init_ensemble(init, tx, keys, None, learning_rate=np.asarray(learning_rates))
    loss = lambda params, key, batch: (jnp.mean((batch["x"] @ params["w"] - 1.0) ** 2), {})  # noqa: E731
    fn = train.make_ensemble_fn(train.make_train_fn(loss, tx, steps_per_call=5, batch_fn=_flagged_batch))
    return run_loop.run(states, lambda mesh: fn, num_steps=10, steps_per_call=5, place=False, ensemble=True,
                        guard=guard)


def test_guard_names_the_diverged_members_and_ablations_keep_them():
    with pytest.raises(FloatingPointError, match=r"^loss is nan \(members \[1\]\); grad_norm is nan "
                                                 r"\(members \[1\]\) at step 1;"):
        _ensemble([1e-2, np.inf, 1e-2], guard=True)
    states, metrics = _ensemble([1e-2, np.inf, 1e-2], guard=False)  # as experiments.ablate runs them
    assert metrics["loss"].shape == (3, 10)
    assert np.isfinite(metrics["loss"][[0, 2]]).all() and not np.isfinite(metrics["loss"][1, 1:]).any()
    assert metrics["params_finite"][[0, 2]].all() and not metrics["params_finite"][1, [4, 9]].any()


def test_loss_spike_rule_is_off_by_default_and_stops_when_turned_on(tmp_path):
    """A finite loss 10^4 times its recent median at step 12 (the batch scaled by 100)."""
    def spiking_batch(key, s):
        return jax.random.normal(jax.random.fold_in(key, s), (4, 3)) * jnp.where(s == 12, 100.0, 1.0)

    tx, state = _state()
    loss = lambda params, key, batch: (jnp.mean((batch @ params["w"] - 1.0) ** 2) + 1.0, {})  # noqa: E731
    make = lambda mesh: jax.jit(train.make_train_fn(loss, tx, steps_per_call=5, batch_fn=spiking_batch))  # noqa: E731
    state = state._replace(model_state=None)
    _, metrics = run_loop.run(state, make, num_steps=20, steps_per_call=5)
    assert metrics["loss"][12] > 1000 * np.median(metrics["loss"][7:12])  # the spike is there, and passes
    with pytest.raises(run_loop.LossSpikeError, match=r"^loss is [0-9.e+]+ at step 12, more than "
                                                      r"train.spike_factor=10 times the median [0-9.]+ of the "
                                                      r"previous 5 steps; stopping without saving or logging this "
                                                      r"state. The newest intact checkpoint is step 10 in "):
        run_loop.run(state, make, num_steps=20, steps_per_call=5, workdir=str(tmp_path), checkpoint_every=5,
                     spike_factor=10, spike_window=5)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "5"]
    with pytest.raises(ValueError, match=r"train.spike_factor=0.5, train.spike_window=5; expected a factor > 1"):
        run_loop.run(state, make, num_steps=20, steps_per_call=5, spike_factor=0.5, spike_window=5)


# ----------------------------------------------------------------------------- the log on resume

class _Crash(Exception):
    pass


def test_resumed_run_logs_each_step_once(tmp_path):
    """A run that logged steps 5..15 but checkpointed only 10 crashes; an evaluation
    record of step 10 and a line cut short by the crash are in the log too. The
    resumed run drops what came after step 10 and appends from there."""
    def crash_at_15(step, metrics, seconds):
        if step == 15:
            raise _Crash

    tx, state = _state()
    wd = str(tmp_path)
    with pytest.raises(_Crash):
        run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5, workdir=wd, checkpoint_every=10,
                     on_call=crash_at_15)
    path = os.path.join(wd, "metrics.jsonl")
    assert [r["step"] for r in read_metrics(path)] == [5, 10, 15]
    with open(path, "a") as f:
        f.write(json.dumps({"step": 10, "eval/nll_nats": 1.5}) + "\n")
        f.write('{"step": 20, "loss": 0.')  # killed mid-line
    tx, state = _state()
    whole, _ = run_loop.run(state, _make_step(tx), num_steps=20, steps_per_call=5, workdir=wd, checkpoint_every=10)
    records = read_metrics(path)
    assert [(r["step"], "loss" in r) for r in records] == [(5, True), (10, True), (10, False), (15, True),
                                                           (20, True)]
    assert int(whole.step) == 20
    # TensorBoard: the resumed run's event file opens by purging steps >= 11, so the
    # loss steps TensorBoard shows are the crashed run's 5, 10 and the resumed 15, 20.
    crashed, resumed = _event_files(os.path.join(wd, "tensorboard"))
    start = [e.step for e in resumed if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    assert start == [11]
    shown = sorted({e.step for e in crashed if _is_loss(e) and e.step < start[0]} |
                   {e.step for e in resumed if _is_loss(e)})
    assert shown == [5, 10, 15, 20]
    assert sorted(e.step for e in crashed if _is_loss(e)) == [5, 10, 15]  # 15 was logged, then purged


def _is_loss(event) -> bool:
    return any(v.tag == "loss" for v in event.summary.value)


def _event_files(directory: str) -> list[list[Event]]:
    """The events of each TensorBoard file in `directory`, oldest file first (TFRecord
    framing: length, its CRC, the serialized Event, its CRC)."""
    files = []
    for name in sorted(os.listdir(directory), key=lambda n: os.path.getmtime(os.path.join(directory, n))):
        data, events, at = open(os.path.join(directory, name), "rb").read(), [], 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append(Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
        files.append(events)
    return files


def test_a_learning_rate_that_diverges_stops_at_the_first_non_finite_signal(tmp_path):
    """The VP-SDE toy at a constant learning rate of 300: the gradient norm turns
    infinite within a few steps. The run stops there, names the newest checkpoint,
    which is finite, and saved nothing after the step that went bad."""
    config = toy_vpsde.get_config()
    config.model.hidden = (32, 32)
    config.data.batch_size = 128
    config.optim.learning_rate, config.optim.schedule, config.optim.warmup_steps = 300.0, "constant", 0
    config.train.num_steps, config.train.steps_per_call, config.train.checkpoint_every = 40, 1, 1
    wd = str(tmp_path)
    with pytest.raises(FloatingPointError) as stop:
        main.train(config, wd, progress=False)
    found = re.match(r"^(.*) at step (\d+); stopping without saving or logging this state. The newest intact "
                     r"checkpoint is step (\d+) in ", str(stop.value))
    assert found, str(stop.value)
    signals, bad, newest = found.group(1), int(found.group(2)), int(found.group(3))
    assert "grad_norm is inf" in signals or "loss is" in signals, signals
    steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")))
    assert newest == bad == steps[-1]  # step s's state (s steps done) was saved; the state after step s was not
    assert [r["step"] for r in read_metrics(os.path.join(wd, "metrics.jsonl"))] == list(range(1, bad + 1))
    _, state = main._restore(config, wd)
    assert int(state.step) == newest
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves((state.params, state.opt_state)))


def test_the_command_line_reports_a_diverged_run_in_one_line(tmp_path):
    """The same diverging run through `python -m experiments.main`: exit code 1 and the
    guard's message as one `error:` line, no traceback."""
    import subprocess
    import sys
    args = [sys.executable, "-m", "experiments.main", "--config=configs/toy_vpsde.py",
            f"--workdir={tmp_path}", "--mode=train", "--config.model.hidden=(32,32)",
            "--config.data.batch_size=128", "--config.optim.learning_rate=300.0",
            "--config.optim.schedule=constant", "--config.optim.warmup_steps=0",
            "--config.train.num_steps=40", "--config.train.steps_per_call=1",
            "--config.train.checkpoint_every=1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert re.search(r"^error: .* at step \d+; stopping without saving", done.stderr, re.M), done.stderr
