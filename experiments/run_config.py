"""A workdir's config is the identity of its run: what its checkpoints were trained with.

A run writes `config.json` once, when it starts in a workdir that holds no
checkpoint, and never rewrites it. Every later start in that workdir (a resumed
run, `--mode=sample|eval`, the analysis scripts) compares the config it was given
with the run's *saved config*: config.json with the changes recorded in
`config_changes.jsonl` applied in order. A differing value is an error that lists
each differing key as `key: saved -> requested`, unless

- the key may change on resume (`may_change_on_resume`): it says how long to
  train, how steps are grouped into compiled calls, when to checkpoint, what the
  divergence guard stops on, where the prepared data lives, or how to sample and
  evaluate:
    train.num_steps (the step budget: with a cosine or linear schedule, which
        spans train.num_steps, the schedule is reshaped from the resumed step on,
        and the run says so),
    train.steps_per_call, train.host_loop (the same steps, grouped otherwise:
        bit-identical on CPU, tests/test_config_checks.py),
    train.checkpoint_every, train.log_every, train.keep_checkpoints,
    train.spike_factor, train.spike_window, train.peak_flops,
    the same keys of any other section named train (reflow.train, distill.train),
    data.data_dir, and every key of eval, sample, compress and compare;
- or the user names it in `allow` (the command line's --allow_config_change=KEY,...;
  a section name allows every key under it). `seed` and `family` never change
  on resume: the run's random key is in its checkpoints, and another family is
  another model. An allowed change takes effect: the optimizer hyperparameters
  that a checkpoint stores (learning rates, betas, weight decay) are set from the
  config after the restore, and a change of array shapes (a width) is an error
  then (`experiments.experiment.Experiment.checked_first_step`).

A training start records every accepted difference in config_changes.jsonl (one
JSON object per start: the step it resumed from, each key's saved and requested
value and why it was allowed) before its first step, so config.json plus that
history always describes the newest checkpoints. A start in a workdir with
checkpoints but no config.json (written before this check existed) records the
requested config as its identity, with a warning that nothing could be checked.
A workdir with a config.json but no checkpoint holds no run yet: a new start
replaces it.
"""
import datetime
import json
import os
import sys
from typing import NamedTuple

import ml_collections

from experiments.configuration import ConfigError, flatten
from experiments.logging import write_atomically

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
CHANGES_FORMAT = "genjax-config-changes/1"
CHECKPOINT_DIRS = ("checkpoints", "checkpoints_damaged")

# Keys of any section named "train" that may change on resume.
TRAIN_KEYS_THAT_MAY_CHANGE = ("num_steps", "steps_per_call", "host_loop", "checkpoint_every", "log_every",
                              "keep_checkpoints", "spike_factor", "spike_window", "peak_flops")
# Top-level sections read only after training (sampling, evaluation, compression).
SECTIONS_THAT_MAY_CHANGE = ("eval", "sample", "compress", "compare")
KEYS_THAT_MAY_CHANGE = ("data.data_dir",)
# Keys that cannot change on resume even when named in `allow`, and why.
NEVER_CHANGE = {
    "seed": "the run's random key is stored in its checkpoints, so a new seed would change nothing "
            "but the samples drawn after training",
    "family": "another family is another model",
}
_ABSENT = object()


def may_change_after_training(key: str) -> bool:
    """True for a key that a start which only reads a trained run (--mode=sample|eval,
    the analysis scripts, the benchmarks) may set on its command line: every key of
    eval, sample, compress and compare, and data.data_dir."""
    return key in KEYS_THAT_MAY_CHANGE or key.split(".", 1)[0] in SECTIONS_THAT_MAY_CHANGE


def may_change_on_resume(key: str) -> bool:
    """True for a key whose value may differ from the saved config on resume."""
    section, _, last = key.rpartition(".")
    return (key in KEYS_THAT_MAY_CHANGE or key.split(".", 1)[0] in SECTIONS_THAT_MAY_CHANGE
            or (section.rpartition(".")[2] == "train" and last in TRAIN_KEYS_THAT_MAY_CHANGE))


def as_json(config, sections=None) -> dict:
    """The config as config.json holds it (tuples as lists), only `sections` (top-level
    keys) when given."""
    if isinstance(config, ml_collections.ConfigDict):
        value = json.loads(config.to_json())
    else:
        value = json.loads(json.dumps(config))
    return value if sections is None else {k: value[k] for k in sections if k in value}


def identity(workdir: str) -> dict | None:
    """config.json of the run in `workdir` as written when it started, None when absent."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read as JSON ({err}); it is the identity of the run in "
                          f"{workdir}: restore it, or use another --workdir") from None


def recorded_changes(workdir: str) -> list:
    """The records of config_changes.jsonl, oldest first (empty when absent)."""
    path = os.path.join(workdir, CHANGES_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    try:
        return [json.loads(line) for line in lines]
    except ValueError as err:
        raise ConfigError(f"{path} cannot be read as JSON lines ({err}); it records the config changes "
                          f"of the run in {workdir}") from None


def _set(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    if value is _ABSENT:
        tree.pop(last, None)
    else:
        tree[last] = value


def saved_config(workdir: str) -> dict | None:
    """The config the newest checkpoints of `workdir` were trained with: config.json
    with the recorded changes applied in order; None when there is no config.json."""
    saved = identity(workdir)
    if saved is None:
        return None
    for record in recorded_changes(workdir):
        for change in record["changes"]:
            _set(saved, change["key"], change.get("requested", _ABSENT))
    return saved


def differences(saved: dict, requested: dict) -> dict:
    """{key: (saved value, requested value)} of every leaf that differs; a key one
    side lacks has the value `_ABSENT` there."""
    flat_saved, flat_requested = flatten(saved), flatten(requested)
    keys = sorted(set(flat_saved) | set(flat_requested))
    return {k: (flat_saved.get(k, _ABSENT), flat_requested.get(k, _ABSENT)) for k in keys
            if flat_saved.get(k, _ABSENT) != flat_requested.get(k, _ABSENT)}


def _show(value) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _allowed_by(key: str, allow) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allow)


def _as_tuples(value):
    """config.json's lists back as the tuples the configs hold."""
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def load_run(workdir: str, overrides: dict | None = None, *, template=None) -> ml_collections.ConfigDict:
    """The config of the trained run in `workdir` (`saved_config`), for a start that
    only reads it: sampling, evaluation, the analysis scripts, the benchmarks.

    `overrides` ({dotted key: value}) may set only what such a start may change
    (`may_change_after_training`); any other key given a value other than its
    saved one is a ConfigError naming it, its saved value and the keys that may
    be set. `template` (the config file's
    ConfigDict, when one was given) supplies keys that the saved config lacks (keys
    a newer version of the config added, read with their defaults). Raises
    ConfigError when the workdir holds no trained run."""
    check_directory(workdir)
    saved = saved_config(workdir)
    if saved is None:
        if checkpoint_steps(workdir):
            raise ConfigError(f"{workdir} has checkpoints but no {CONFIG_FILE}, so the config it was trained "
                              f"with is unknown; pass the training config with --config and its overrides")
        raise ConfigError(f"no trained run in {workdir} (no {CONFIG_FILE}); train it first "
                          f"(python -m experiments.main --mode=train --workdir={workdir} --config=...)")
    if template is not None and template.get("family") != saved.get("family"):
        raise ConfigError(f"--config is a {template.get('family')!r} config but {workdir} holds a "
                          f"{saved.get('family')!r} run; leave --config out (the run's config is read from "
                          f"{workdir}/{CONFIG_FILE}) or pass the config it was trained with")
    overrides = dict(overrides or {})
    flat_saved = flatten(saved)
    def plain(value):
        return as_json(value) if isinstance(value, (tuple, list, dict)) else value

    # repeating a training value as it was saved changes nothing, so it is accepted
    refused = [k for k in overrides if not may_change_after_training(k)
               and plain(overrides[k]) != flat_saved.get(k, _ABSENT)]
    if refused:
        lines = []
        for key in refused:
            now = flat_saved.get(key, _ABSENT)
            lines.append(f"--config.{key}={overrides[key]!r}: {key} is part of the trained run in {workdir} "
                         f"(saved: {_show(now)}) and cannot change after training")
        raise ConfigError(lines + [
            f"a start that reads a trained run takes its config from {workdir}/{CONFIG_FILE}; it may set "
            f"only {', '.join(k + '.*' for k in SECTIONS_THAT_MAY_CHANGE)} and {', '.join(KEYS_THAT_MAY_CHANGE)}; "
            f"to train with other values, use another --workdir (or resume with --allow_config_change)"])
    merged = as_json(template) if template is not None else {}
    for key, value in flatten(saved).items():
        _set(merged, key, value)
    for key, value in overrides.items():
        _set(merged, key, plain(value))
    return ml_collections.ConfigDict(_as_tuples(merged))


def check_allow(allow, *configs) -> None:
    """Raises ConfigError when `allow` names a key (or section) that none of the
    configs (json dicts) has, or a key that never changes on resume."""
    keys = set()
    for config in configs:
        if config is not None:
            keys |= set(flatten(config))
    for a in allow:
        if a in NEVER_CHANGE:
            raise ConfigError(f"--allow_config_change={a}: {a} cannot change on resume ({NEVER_CHANGE[a]}); "
                              f"start a new run in another --workdir")
        if not any(_allowed_by(k, [a]) for k in keys):
            raise ConfigError(f"--allow_config_change={a}: {a!r} is not a key or section of this config; "
                              f"expected a dotted key such as optim.learning_rate")


def check_resume(saved: dict, requested: dict, allow=(), *, workdir: str = "the workdir") -> dict:
    """The differences between the saved and the requested config that a resume may
    make ({key: (saved, requested)}); raises ConfigError listing the others."""
    found = differences(saved, requested)
    refused = {k: v for k, v in found.items()
               if k in NEVER_CHANGE or not (may_change_on_resume(k) or _allowed_by(k, allow))}
    if refused:
        lines = [f"  {k}: {_show(old)} -> {_show(new)}" for k, (old, new) in refused.items()]
        keys = ",".join(k for k in refused if k not in NEVER_CHANGE)
        fixed = [k for k in refused if k in NEVER_CHANGE]
        advice = "Resume with the saved values, or start a new run in another --workdir"
        if keys:
            advice += (f", or change them on purpose with --allow_config_change={keys} (recorded in "
                       f"{CHANGES_FILE})")
        for key in fixed:
            advice += f". {key} cannot change on resume: {NEVER_CHANGE[key]}"
        raise ConfigError(
            f"the config differs from the run in {workdir} ({CONFIG_FILE} and {CHANGES_FILE} describe "
            f"its checkpoints); saved -> requested:\n" + "\n".join(lines) + f"\n{advice}.")
    return found


def _step_dirs(directory: str) -> list:
    if not os.path.isdir(directory):
        return []
    return [int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n))]


def checkpoint_steps(workdir: str) -> list:
    """Steps of the checkpoints under `workdir` (also those set aside as damaged, and
    those of stages in its subdirectories, as experiments.reflow keeps them), newest first."""
    steps = []
    for root in [workdir] + ([os.path.join(workdir, d) for d in sorted(os.listdir(workdir))]
                             if os.path.isdir(workdir) else []):
        for name in CHECKPOINT_DIRS:
            steps += _step_dirs(os.path.join(root, name))
    return sorted(steps, reverse=True)


def check_directory(workdir) -> None:
    """Raises ConfigError unless `workdir` is set and is a directory or can become one."""
    if workdir is None:
        raise ConfigError("--workdir is not set; expected a directory for the run's checkpoints and files")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file; expected a directory (existing, or one to create)")


class Plan(NamedTuple):
    """What a start in a workdir found, for `commit` once the run is built."""
    workdir: str
    requested: dict           # the config as config.json would hold it
    training: bool
    new_run: bool             # no checkpoint: config.json is (re)written
    adopted: bool             # checkpoints without config.json: the requested config becomes it
    accepted: dict            # {key: (saved, requested)} differences allowed on resume
    allow: tuple
    newest_step: int | None


def check_workdir(workdir: str, config, *, training: bool = True, allow=(), sections=None) -> Plan:
    """Checks `config` against the run in `workdir` before anything is built; reads
    only. Raises ConfigError when the workdir is not a directory, when it holds no
    checkpoint and nothing will train, or when the config differs from the saved
    one (`check_resume`). `sections`: the top-level keys that make the run's
    identity (default all). Pass the Plan to `commit` once the run is built."""
    check_directory(workdir)
    allow = tuple(a for a in allow if a)
    requested = as_json(config, sections)
    steps = checkpoint_steps(workdir)
    saved = saved_config(workdir)
    check_allow(allow, saved, requested)
    if not steps and not training:
        raise ConfigError(f"no checkpoint in {workdir}; train it first (python -m experiments.main --mode=train)")
    accepted = {}
    if steps and saved is not None:
        accepted = check_resume(saved, requested, allow, workdir=workdir)
    return Plan(workdir, requested, training, new_run=not steps, adopted=bool(steps) and saved is None,
                accepted=accepted, allow=allow, newest_step=steps[0] if steps else None)


def write_identity(workdir: str, requested: dict) -> None:
    """Writes config.json (atomically). Only for a workdir without checkpoints, or one
    whose checkpoints have no config.json yet: the identity of a run is never rewritten."""
    if checkpoint_steps(workdir) and identity(workdir) is not None:
        raise ConfigError(f"{os.path.join(workdir, CONFIG_FILE)} describes the checkpoints of the run "
                          f"there and is never rewritten; record changes with record_changes")
    os.makedirs(workdir, exist_ok=True)
    write_atomically(os.path.join(workdir, CONFIG_FILE), json.dumps(requested, indent=2) + "\n")


def record_changes(workdir: str, accepted: dict, *, allow=(), step: int | None = None) -> dict:
    """Appends one record of the accepted differences, made from checkpoint step
    `step` on, to config_changes.jsonl (the file is rewritten atomically, so a
    reader never sees half a line); returns it."""
    changes = []
    for key, (old, new) in accepted.items():
        change = {"key": key}
        if old is not _ABSENT:
            change["saved"] = old
        if new is not _ABSENT:
            change["requested"] = new
        change["allowed_by"] = ("--allow_config_change" if _allowed_by(key, allow) and not may_change_on_resume(key)
                                else "may change on resume")
        changes.append(change)
    record = {"format": CHANGES_FORMAT,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "from_step": step, "changes": changes}
    path = os.path.join(workdir, CHANGES_FILE)
    old_text = open(path).read() if os.path.exists(path) else ""
    if old_text and not old_text.endswith("\n"):
        old_text += "\n"
    write_atomically(path, old_text + json.dumps(record) + "\n")
    return record


def commit(plan: Plan, *, step: int | None = None, writer: bool | None = None) -> None:
    """Once the run is known to be consistent (data read, model built, checkpoint
    restored): writes config.json of a new run, or records the accepted changes of
    a resumed one, which starts from `step` (default: the newest checkpoint step on
    disk). Nothing for a start that does not train, or in a process other than the
    writer (process 0 by default)."""
    if not plan.training:
        return
    if writer is None:
        import jax

        writer = jax.process_index() == 0
    if not writer:
        return
    if plan.new_run:
        old = identity(plan.workdir)
        if old is not None and old != plan.requested:
            print(f"note: {os.path.join(plan.workdir, CONFIG_FILE)} described no checkpoint; it now holds "
                  f"this run's config", file=sys.stderr)
        for stale in (CHANGES_FILE,):  # the history of a run that left no checkpoint
            if os.path.exists(os.path.join(plan.workdir, stale)):
                os.remove(os.path.join(plan.workdir, stale))
        write_identity(plan.workdir, plan.requested)
    elif plan.adopted:
        print(f"warning: {plan.workdir} has checkpoints but no {CONFIG_FILE}, so this config could not be "
              f"checked against them; {CONFIG_FILE} now records it as the run's config", file=sys.stderr)
        write_identity(plan.workdir, plan.requested)
    elif plan.accepted:
        record_changes(plan.workdir, plan.accepted, allow=plan.allow,
                       step=plan.newest_step if step is None else step)
        _note_schedule_change(plan)


def _note_schedule_change(plan: Plan) -> None:
    """Says so when a changed step budget also reshapes a learning-rate schedule
    (cosine and linear schedules span train.num_steps)."""
    flat = flatten(plan.requested)
    for key, (old, new) in plan.accepted.items():
        if key == "train.num_steps" or key.endswith(".train.num_steps"):
            prefix = key[: -len("train.num_steps")]
            shaped = sorted({v for k, v in flat.items() if k.startswith(prefix + "optim.")
                             and k.endswith("schedule") and v != "constant"})
            if shaped:
                print(f"note: {key} {_show(old)} -> {_show(new)} also reshapes the {'/'.join(shaped)} "
                      f"learning-rate schedule from the resumed step on (recorded in {CHANGES_FILE})",
                      file=sys.stderr)
