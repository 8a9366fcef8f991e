"""Checks of a config before anything runs: its command-line overrides, then its values.

ml_collections reports an unknown override key as a bare AttributeError; this
names the bad key and lists the valid keys at that level instead.

`validate` reads every value a run depends on (counts, sizes, divisibility the
trainer needs, learning rates and weights, choices the registry knows) and
reports each bad one as a line naming the key, the value and what was expected,
so that a bad value stops the run before data is read or a network is built
(a batch size of 0 otherwise surfaces as a ZeroDivisionError deep inside JAX,
and a negative step count as a run that trains nothing and exits 0).

`ConfigError` is what the command line (`experiments.main.run`) prints as
`error: ...` and exits with code 2, without a traceback.
"""
import ast
import difflib
import importlib.util
import math
import os
import re
import sys

import ml_collections


class ConfigError(ValueError):
    """A config value, flag or workdir the run cannot use. `problems` holds one line
    per bad value; the command line prints each as `error: <line>` and exits 2."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def load_config_file(path: str) -> ml_collections.ConfigDict:
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_genjax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def check_override_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ConfigError if `dotted` (e.g. 'optim.learning_rate') is not a key."""
    node, walked = config, []
    for part in dotted.split("."):
        keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in keys:
            where = ".".join(walked) or "the top level"
            hint = difflib.get_close_matches(part, keys, n=1)
            hint = f" Did you mean {'.'.join(walked + hint)!r}?" if hint else ""
            groups = sorted(k for k in keys if isinstance(node[k], ml_collections.ConfigDict))
            if walked == ["optim"] and groups:
                hint += f" The parameter groups of this config's family are {groups}."
            raise ConfigError(
                f"unknown config key {dotted!r}: {part!r} is not in {where}; "
                f"valid keys there: {sorted(keys)}.{hint}")
        node = node[part]
        walked.append(part)


def check_argv(argv, flag: str = "config") -> None:
    """Validates every --config.a.b=v override in argv against the config file."""
    path = None
    for arg in argv:
        if arg.startswith(f"--{flag}="):
            path = arg.split("=", 1)[1]
    if path is None:
        return
    config = load_config_file(path.split(":", 1)[0])
    for arg in argv:
        if arg.startswith(f"--{flag}."):
            key = arg[len(flag) + 3:].split("=", 1)[0]
            check_override_key(config, key)


def _is_whole_tuple(text: str) -> bool:
    """True when an override value spells a whole tuple or list ("(64,64)", "64,64",
    "[64]"), False for one element ("64", "relu")."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return False
    return isinstance(value, (tuple, list))


def last_tuple_override_wins(argv, flag: str = "config") -> list:
    """argv with every --config.<key>=<value> that an later whole-tuple value of the
    same key replaces left out.

    ml_collections parses all occurrences of a tuple field's override together and
    concatenates them (its way to spell a tuple one element per flag:
    `--config.model.hidden=32 --config.model.hidden=32` is (32, 32)), so
    `--config.model.hidden=(32,32) --config.model.hidden=(64,64)` became
    (32, 32, 64, 64). Here a value that is a whole tuple or list replaces whatever
    the same key was given before it, as the last of repeated flags does for every
    other type; single elements after it still append. Only the `=` form is read
    (the form `check_argv` checks)."""
    pattern = re.compile(rf"^--{re.escape(flag)}\.([^=]+)=(.*)$", re.S)
    last_whole = {}
    for i, arg in enumerate(argv):
        match = pattern.match(arg)
        if match and _is_whole_tuple(match.group(2)):
            last_whole[match.group(1)] = i
    kept = []
    for i, arg in enumerate(argv):
        match = pattern.match(arg)
        if match and i < last_whole.get(match.group(1), -1):
            continue
        kept.append(arg)
    return kept


def exit_with(err: ConfigError):
    """Prints each of the error's lines to stderr as `error: ...` and exits with code 2."""
    print("\n".join(f"error: {line}" for line in err.problems), file=sys.stderr)
    raise SystemExit(2)


def prepare_argv(argv, flag: str = "config") -> list:
    """argv (with the program name first) once its overrides are checked
    (`check_argv`; a bad one exits through `exit_with`) and repeated whole tuples
    reduced to the last (`last_tuple_override_wins`)."""
    try:
        check_argv(argv[1:], flag)
    except ConfigError as err:
        exit_with(err)
    return last_tuple_override_wins(argv, flag)


def reporting_errors(main_fn):
    """`main_fn` (an absl main) with a ConfigError turned into `exit_with`: one line
    per problem and exit code 2, no traceback; a run that cannot resume (no intact
    checkpoint) or that diverged exits 1 with its one message."""
    from experiments.checkpoint import CheckpointError  # the glue's run errors, not config ones

    def main(argv):
        try:
            return main_fn(argv)
        except ConfigError as err:
            exit_with(err)
        except (CheckpointError, FloatingPointError) as err:
            # no intact checkpoint, or a diverged run: the message is the whole story
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1)

    return main


# ----------------------------------------------------------------------------- values

def flatten(config, prefix: str = "") -> dict:
    """{"a.b.c": value} of every leaf of a ConfigDict (or nested dict)."""
    items = config.items() if hasattr(config, "items") else ()
    flat = {}
    for key, value in items:
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive_int(value):
    return None if _is_int(value) and value >= 1 else "a positive integer"


def _count(value):
    return None if _is_int(value) and value >= 0 else "an integer >= 0"


def _non_negative(value):
    return None if _is_number(value) and value >= 0 else "a finite number >= 0"


def _positive(value):
    return None if _is_number(value) and value > 0 else "a finite number > 0"


def _fraction(value):
    return None if _is_number(value) and 0 <= value < 1 else "a number in [0, 1)"


def _closed_fraction(value):
    return None if _is_number(value) and 0 <= value <= 1 else "a number in [0, 1]"


def _clip(value):
    return None if value is None or (_is_number(value) and value >= 0) else \
        "a finite number > 0, or 0 or None for no clipping"


def _spike_factor(value):
    return None if _is_number(value) and (value == 0 or value > 1) else \
        "a number > 1 (0: the loss-spike rule is off)"


def _positive_ints(value):
    ok = isinstance(value, (tuple, list)) and value and all(_is_int(v) and v >= 1 for v in value)
    return None if ok else "a non-empty tuple of positive integers"


def _choice(choices):
    def check(value):
        return None if value in choices else f"one of {sorted(choices)}"
    return check


# Checks by the key's last part inside sections of each kind. A "train" section is
# config.train or any section named train (reflow.train, distill.train); an
# optimizer section is any section with a learning_rate (config.optim, a parameter
# group's config.optim.<group>, reflow.optim).
_TRAIN_CHECKS = {
    "num_steps": _positive_int, "steps_per_call": _positive_int, "checkpoint_every": _positive_int,
    "log_every": _positive_int,
    "keep_checkpoints": _positive_int, "grad_accum_steps": _positive_int, "fsdp": _positive_int,
    "spike_factor": _spike_factor, "spike_window": _positive_int, "peak_flops": _non_negative,
    "warmup_fraction": _fraction, "tokens": _positive_ints,
}
_OPTIM_CHECKS = {
    "learning_rate": _non_negative, "weight_decay": _non_negative, "warmup_steps": _count,
    "grad_clip": _clip, "b1": _fraction, "b2": _fraction, "end_fraction": _closed_fraction,
    "ema_decay": _fraction,
}
_SECTION_CHECKS = {
    "data": {"batch_size": _positive_int, "seq_len": _positive_int, "eval_windows": _positive_int,
             "train_size": _count},
    "sample": {"num": _positive_int, "num_steps": _positive_int, "temperature": _positive,
               "top_k": _count, "top_p": _closed_fraction, "rtol": _positive, "atol": _positive,
               "step_size": _positive, "snr": _non_negative, "eps": _non_negative},
    "eval": {"params": _choice(("ema", "raw")), "num": _count, "grid_size": _positive_int, "batch_size": _positive_int,
             "rtol": _positive, "atol": _positive, "heatmap_tol": _positive,
             "curve_windows": _count, "num_windows": _count},
    "compare": {"num": _positive_int, "euler_steps": _positive_ints, "num_trajectories": _positive_int,
                "straightness_num": _positive_int, "straightness_steps": _positive_int},
}


def _choices(config) -> dict:
    """key -> the values the glue knows for it, read from the registry and trainer."""
    from experiments import experiment, registry  # heavy (JAX, flax): only when validating
    from genjax import train as train_lib

    choices = {"family": tuple(registry.FAMILIES), "model.sde": tuple(registry.SDES)}
    family = registry.FAMILIES.get(config.get("family"))
    if family is not None:
        choices["sample.method"] = tuple(family.samplers)
    for key in flatten(config):
        last = key.rsplit(".", 1)[-1]
        if last == "schedule":
            choices[key] = train_lib.SCHEDULES
        elif last == "host_loop":
            choices[key] = experiment.HOST_LOOP_CHOICES
    return choices


def problems(config) -> list:
    """One line per bad value of `config` (empty when it can run): each names the
    key, the value and what was expected. Keys a config does not have are not
    required; values are read as the trainer and the glue will read them."""
    flat = flatten(config)
    optim_sections = {key.rsplit(".", 1)[0] for key in flat if key.endswith(".learning_rate")}
    found = []

    def check(key, rule):
        expected = rule(flat[key])
        if expected is not None:
            found.append(f"{key}={flat[key]!r}; expected {expected}")

    for key in flat:
        section, _, last = key.rpartition(".")
        if "seed" == key:
            check(key, lambda v: None if _is_int(v) else "an integer")
        elif section.rpartition(".")[2] == "train" and last in _TRAIN_CHECKS:
            check(key, _TRAIN_CHECKS[last])
        elif section in optim_sections and last in _OPTIM_CHECKS:
            check(key, _OPTIM_CHECKS[last])
        elif section == "optim" and last == "ema_decay":  # the EMA of a family with groups
            check(key, _fraction)
        elif section in _SECTION_CHECKS and last in _SECTION_CHECKS[section]:
            check(key, _SECTION_CHECKS[section][last])
    for key, allowed in _choices(config).items():
        if key in flat:
            check(key, _choice(allowed))

    # what the trainer needs of several values together (only when each is valid alone)
    bad = {line.split("=", 1)[0] for line in found}
    for train in sorted({k.rsplit(".", 1)[0] for k in flat if k.endswith("steps_per_call")}):
        per_call = flat[f"{train}.steps_per_call"]
        for name in ("num_steps", "checkpoint_every"):
            key = f"{train}.{name}"
            if key in flat and not {key, f"{train}.steps_per_call"} & bad and flat[key] % per_call:
                found.append(f"{key}={flat[key]!r}; expected a multiple of {train}.steps_per_call="
                             f"{per_call} (one compiled call runs that many steps)")
    accum = flat.get("train.grad_accum_steps", 1)
    batch = flat.get("data.batch_size")
    if (batch is not None and not {"data.batch_size", "train.grad_accum_steps"} & bad
            and batch % accum):
        found.append(f"data.batch_size={batch!r}; expected a multiple of train.grad_accum_steps={accum} "
                     f"(each batch is split into that many micro-batches)")
    return found


def warnings(config) -> list:
    """Values that can run but probably do not do what was meant, one line each: a
    learning-rate warmup longer than the step budget (the rate never reaches its
    peak). (A long EMA horizon is not one: its decay warms up, genjax.train.ema_decay_at.)"""
    flat = flatten(config)
    found = []
    for key, value in flat.items():
        section, _, last = key.rpartition(".")
        budget_key = _budget_of(section, flat)
        if budget_key is None or not _is_number(value):
            continue
        budget = flat[budget_key]
        if last == "warmup_steps" and value > budget:
            found.append(f"{key}={value} is more than {budget_key}={budget}: the learning rate reaches only "
                         f"{budget / value:.0%} of its peak; lower {key}")
    return found


def _budget_of(section: str, flat: dict) -> str | None:
    """The train.num_steps key that bounds an optimizer section (optim, optim.<group>,
    reflow.optim -> reflow.train.num_steps), None when there is none."""
    parts = section.split(".")
    while parts:
        if parts[-1] == "optim":
            key = ".".join(parts[:-1] + ["train", "num_steps"])
            return key if _is_int(flat.get(key)) else None
        parts.pop()
    return None


def validate(config) -> None:
    """Raises ConfigError listing every bad value of `config` (see `problems`)."""
    found = problems(config)
    if found:
        raise ConfigError(found)
