r"""Ablations: every combination of swept config values x seeds, trained together.

    python -m experiments.ablate --config=configs/lm_stdlib.py --workdir=runs/ablate \
        --sweep='optim.learning_rate=1e-4,3e-4,1e-3' --sweep='model.dropout=0,0.1' \
        --seeds=3 [--strategy=auto|vmap|map|loop] [--config.train.num_steps=2000]

Every member of one ensemble program (`experiments.ensemble.ensemble_runner`:
vmapped on accelerators; on CPU the fastest of vmap / lax.map / loop) holds its
own values of:
  - the seed;
  - the injected optimizer hyperparameters (the learning rate, the weight decay),
    which live in the optimizer state;
  - every other float config value that the model, optimizer and trainer accept
    as a traced scalar (a dropout rate, an EMA decay, an SDE's beta_max, ...):
    each member builds its model from the config with that value set to a
    traced scalar. Which keys qualify is found by tracing one step
    (`traced_keys`); a value that decides a shape or a Python branch does not,
    nor does a data.* value (the data source is built once, outside the trace).
Any other key changes the program itself (a network width, the batch size, a
string choice), so each of its values is its own ensemble program. For any
family in `registry.FAMILIES`.

Member (seed s, values v) equals `experiments.main` trained alone with
config.seed + s and v. Writes results.json, results.md (final training loss, mean ±
std over seeds, per combination) and loss_curves.png to the workdir.
"""
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import configuration, plots, run_config, run_loop
from experiments import main as main_lib  # defines --config (with overrides) and --workdir
from experiments.ensemble import ensemble_runner
from experiments.experiment import Experiment
from genjax import train as train_lib

flags.declare_key_flag("config")
flags.declare_key_flag("workdir")
flags.declare_key_flag("verbose")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "key=v1,v2,... (repeatable): values to cross.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds per combination (config.seed + 0, 1, ...).")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", ["auto", "vmap", "map", "loop"],
                              "How ensemble members run (auto: vmap on accelerators, timed on CPU).")

# optimizer hyperparameters that live in the optimizer state (per member inside one
# program): optim.<name>, or optim.<group>.<name> for a family with parameter groups
INJECTED_NAMES = ("learning_rate", "weight_decay")


def injected_name(key: str) -> str | None:
    """The `train.set_hyperparams` name of a swept config key that is an injected
    optimizer hyperparameter ("learning_rate", "critic.learning_rate"), else None."""
    parts = key.split(".")
    if parts[0] != "optim" or parts[-1] not in INJECTED_NAMES or len(parts) not in (2, 3):
        return None
    return ".".join(parts[1:])


def parse_sweeps(config, sweeps: list[str]) -> dict[str, list]:
    """{'optim.learning_rate': [1e-4, ...], ...}; keys are checked against the config
    (an unknown key lists the valid ones) and values cast to the field's type."""
    parsed = {}
    for sweep in sweeps:
        if "=" not in sweep:
            raise ValueError(f"--sweep={sweep!r}; expected key=v1,v2,...")
        key, values = sweep.split("=", 1)
        configuration.check_override_key(config, key)
        node, leaf = _parent(config, key)
        current = node[leaf]
        cast = type(current) if isinstance(current, (int, float, str)) and not isinstance(current, bool) else str
        if cast is int and any("." in v or "e" in v.lower() for v in values.split(",")):
            cast = float
        parsed[key] = [cast(v) for v in values.split(",")]
    return parsed


def _parent(config, key: str):
    """(the ConfigDict holding dotted `key`, the key's last part)."""
    *path, leaf = key.split(".")
    for part in path:
        config = config[part]
    return config, leaf


def _set(config, key: str, value) -> None:
    node, leaf = _parent(config, key)
    node[leaf] = value


def _with_values(config, values: dict):
    config = config.copy_and_resolve_references()
    for key, value in values.items():
        _set(config, key, value)
    return config


def member_experiment(exp, traced_values: dict):
    """`exp`'s experiment with `traced_values` (dotted key -> traced scalar) set in a
    copy of its config, sharing its data source: the model, optimizer and train
    function of one ensemble member."""
    config = exp.config.copy_and_resolve_references()
    with config.ignore_type():  # a tracer where the config holds a float
        for key, value in traced_values.items():
            _set(config, key, value)
    return Experiment(config, source=exp.source)


def _init_member(exp, key, hyper: dict, traced_values: dict):
    return member_experiment(exp, traced_values).init_state(key, **hyper)


def _member_train_fn(exp, steps_per_call=None, unroll=1):
    """(state, traced values) -> ((state, traced values), metrics) for one member."""
    def train_fn(carry):
        state, traced_values = carry
        member = member_experiment(exp, traced_values)
        state, metrics = member.train_fn(None, steps_per_call=steps_per_call, unroll=unroll)(state)
        return (state, traced_values), metrics
    return train_fn


# A value used where a concrete number is needed (a shape, `if`, int(), np.asarray).
_NEEDS_CONCRETE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                   jax.errors.TracerIntegerConversionError)


def traced_keys(exp, sweeps: dict[str, list]) -> list[str]:
    """The swept keys, other than the injected optimizer hyperparameters, whose float
    values can be per-member traced scalars: tracing member init and one train call
    (`jax.eval_shape`, nothing runs) with the value as a tracer succeeds."""
    found = []
    for key, values in sweeps.items():
        # data.* values build the data source, which members share: one program per value.
        if injected_name(key) or key.startswith("data.") or not all(isinstance(v, float) for v in values):
            continue
        def one_call(traced_values):
            state = _init_member(exp, jax.random.PRNGKey(0), {}, traced_values)
            return _member_train_fn(exp)((state, traced_values))
        try:
            jax.eval_shape(one_call, {key: jnp.float32(values[0])})
        except _NEEDS_CONCRETE:
            continue
        found.append(key)
    return found


def run_group(exp, member_values: list[dict], seeds: int, strategy: str):
    """Trains len(member_values) x seeds members of one program; returns (losses of
    shape (K, num_steps), the member list, chosen strategy, stacked final states).

    member_values[i] maps injected-hyperparameter and traced keys to values."""
    config = exp.config
    members = [(s, v) for v in member_values for s in range(seeds)]
    keys = jnp.stack([jax.random.PRNGKey(config.seed + s) for s, _ in members])
    names = list(member_values[0]) if member_values else []
    column = lambda k: jnp.asarray([v[k] for _, v in members], jnp.float32)  # noqa: E731
    hyper = {injected_name(k): column(k) for k in names if injected_name(k)}
    traced = {k: column(k) for k in names if not injected_name(k)}
    states = jax.jit(jax.vmap(lambda key, hp, tv: _init_member(exp, key, hp, tv)))(keys, hyper, traced)
    chosen = {}

    tc = config.train
    # Networks that `exp.host_loop()` steps from Python (convolutions on CPU) run one
    # jitted ensemble step per call; the rest scan train.steps_per_call steps per call.
    host = exp.host_loop()
    member_train_fn = _member_train_fn(exp, steps_per_call=1, unroll=True) if host else _member_train_fn(exp)

    def make_step(mesh):
        run, chosen["strategy"], _ = ensemble_runner(member_train_fn, (states, traced), strategy=strategy)
        return train_lib.host_loop(run, tc.steps_per_call, step_axis=1) if host else run

    # No guard: a member that diverges (a too-large learning rate) is a result of the sweep.
    (states, _), metrics = run_loop.run((states, traced), make_step, num_steps=tc.num_steps,
                                        steps_per_call=tc.steps_per_call, place=False, ensemble=True,
                                        guard=False)
    return np.asarray(metrics["loss"]), members, chosen["strategy"], states


def ablate(config, sweeps: dict[str, list], seeds: int, strategy: str = "auto"):
    """Trains every combination; returns (result rows, final stacked states of each
    program, {"per_member": keys traced or injected, "structural": the others})."""
    if seeds < 1:
        raise ValueError(f"--seeds={seeds}; expected an int >= 1")
    base = Experiment(config)
    per_member = [k for k in sweeps if injected_name(k)] + traced_keys(base, sweeps)
    per_member = [k for k in sweeps if k in per_member]  # in the order given
    structural = {k: v for k, v in sweeps.items() if k not in per_member}
    member_values = [dict(zip(per_member, combo))
                     for combo in itertools.product(*(sweeps[k] for k in per_member))]
    rows, all_states = [], []
    for combo in itertools.product(*structural.values()):
        fixed = dict(zip(structural, combo))
        exp = Experiment(_with_values(config, fixed)) if fixed else base
        t0 = time.perf_counter()
        losses, members, chosen, states = run_group(exp, member_values, seeds, strategy)
        seconds = time.perf_counter() - t0
        for values in member_values:
            idx = [i for i, (_, v) in enumerate(members) if v == values]
            final = losses[idx, -max(1, losses.shape[1] // 20):].mean(axis=1)  # last 5% of steps
            rows.append({**fixed, **values, "final_loss_mean": float(final.mean()),
                         "final_loss_std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
                         "seeds": len(idx), "loss_curves": losses[idx].tolist(),
                         "strategy": chosen, "program_seconds": seconds,
                         "program_members": len(members)})
        all_states.append(states)
    return rows, all_states, {"per_member": per_member, "structural": list(structural)}


def to_markdown(rows, keys):
    head = "| " + " | ".join(keys) + " | final loss (mean ± std over seeds) |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        cells = [f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + f" | {r['final_loss_mean']:.4f} ± {r['final_loss_std']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    config, workdir = main_lib._CONFIG.value, main_lib._WORKDIR.value
    configuration.validate(config)
    run_config.check_directory(workdir)
    try:
        sweeps = parse_sweeps(config, _SWEEP.value)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    os.makedirs(workdir, exist_ok=True)
    rows, _, kinds = ablate(config, sweeps, _SEEDS.value, _STRATEGY.value)
    keys = list(sweeps)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(rows, f)
    table = to_markdown(rows, keys)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    curves = {", ".join(f"{k.split('.')[-1]}={r[k]:g}" if isinstance(r[k], float) else f"{k.split('.')[-1]}={r[k]}"
                        for k in keys) or "baseline": np.asarray(r["loss_curves"]) for r in rows}
    plots.loss_curves(os.path.join(workdir, "loss_curves.png"), curves)
    programs = {r["program_seconds"]: r for r in rows}
    print(table)
    print(f"per member: {kinds['per_member'] or 'seed only'}; one program per value: {kinds['structural'] or 'none'}")
    print(f"{len(programs)} program(s), {rows[0]['program_members']} members each, "
          f"strategy {rows[0]['strategy']}, {sum(programs):.1f} s")


if __name__ == "__main__":
    main_lib.run(main, required=("config", "workdir"))
