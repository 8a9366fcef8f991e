"""Ablations: every combination of swept config values x seeds, trained together.

    python -m experiments.ablate --config=configs/toy_vpsde.py --workdir=runs/ablate \
        --sweep='optim.learning_rate=1e-4,3e-4,1e-3' --sweep='optim.weight_decay=0,0.01' \
        --seeds=3 [--strategy=auto|vmap|map|loop] [--config.train.num_steps=2000]

Values that live in the optimizer state as injected hyperparameters (the learning
rate, the weight decay) and the seed are per-member values of ONE ensemble program
(`genjax.train.init_ensemble` + `experiments.ensemble.ensemble_runner`: vmapped on
accelerators; on CPU the fastest of vmap / lax.map / loop). Any other key changes
the program itself (a network width, a dropout rate, the batch size), so each of
its values is its own ensemble program. For any family in `registry.FAMILIES`.

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

from experiments import configuration, plots
from experiments import main as main_lib  # defines --config (with overrides) and --workdir
from experiments.ensemble import ensemble_runner
from genjax import train as train_lib

_SWEEP = flags.DEFINE_multi_string("sweep", [], "key=v1,v2,... (repeatable): values to cross.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds per combination (config.seed + 0, 1, ...).")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", ["auto", "vmap", "map", "loop"],
                              "How ensemble members run (auto: vmap on accelerators, timed on CPU).")

# config key -> injected optimizer hyperparameter (per-member inside one program)
INJECTED = {"optim.learning_rate": "learning_rate", "optim.weight_decay": "weight_decay"}


def parse_sweeps(config, sweeps: list[str]) -> dict[str, list]:
    """{'optim.learning_rate': [1e-4, ...], ...}; keys are checked against the config
    (an unknown key lists the valid ones) and values cast to the field's type."""
    parsed = {}
    for sweep in sweeps:
        if "=" not in sweep:
            raise ValueError(f"--sweep={sweep!r}; expected key=v1,v2,...")
        key, values = sweep.split("=", 1)
        configuration.check_override_key(config, key)
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        current = node[key.split(".")[-1]]
        cast = type(current) if isinstance(current, (int, float, str)) and not isinstance(current, bool) else str
        if cast is int and any("." in v or "e" in v.lower() for v in values.split(",")):
            cast = float
        parsed[key] = [cast(v) for v in values.split(",")]
    return parsed


def _with_values(config, values: dict):
    config = config.copy_and_resolve_references()
    for key, value in values.items():
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        node[key.split(".")[-1]] = value
    return config


def run_group(config, member_values: list[dict], seeds: int, strategy: str):
    """Trains len(member_values) x seeds members of one program; returns
    (losses of shape (K, num_steps), the member list, chosen strategy)."""
    exp = main_lib.Experiment(config)
    members = [(s, v) for v in member_values for s in range(seeds)]
    keys = jnp.stack([jax.random.PRNGKey(config.seed + s) for s, _ in members])
    hyper = {INJECTED[k]: [v[k] for _, v in members] for k in (member_values[0] if member_values else {})}
    example = exp.source.example_batch(config.data.batch_size)
    states = train_lib.init_ensemble(exp.model.init, exp.tx, keys, example, **hyper)
    run, chosen, _ = ensemble_runner(exp.train_fn(None), states, strategy=strategy)
    tc = config.train
    if tc.num_steps % tc.steps_per_call:
        raise ValueError(f"train.num_steps ({tc.num_steps}) must be a multiple of "
                         f"train.steps_per_call ({tc.steps_per_call})")
    losses = []
    for _ in range(tc.num_steps // tc.steps_per_call):
        states, metrics = run(states)
        losses.append(np.asarray(metrics["loss"]))
    return np.concatenate(losses, axis=1), members, chosen, states


def ablate(config, sweeps: dict[str, list], seeds: int, strategy: str = "auto"):
    """Trains every combination; returns a list of result rows and the final states."""
    if seeds < 1:
        raise ValueError(f"--seeds={seeds}; expected an int >= 1")
    injected = {k: v for k, v in sweeps.items() if k in INJECTED}
    structural = {k: v for k, v in sweeps.items() if k not in INJECTED}
    member_values = [dict(zip(injected, combo)) for combo in itertools.product(*injected.values())]
    rows, all_states = [], []
    for combo in itertools.product(*structural.values()):
        fixed = dict(zip(structural, combo))
        t0 = time.perf_counter()
        losses, members, chosen, states = run_group(_with_values(config, fixed), member_values, seeds, strategy)
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
    return rows, all_states


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
    try:
        sweeps = parse_sweeps(config, _SWEEP.value)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    os.makedirs(workdir, exist_ok=True)
    rows, _ = ablate(config, sweeps, _SEEDS.value, _STRATEGY.value)
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
    print(f"{len(programs)} program(s), {rows[0]['program_members']} members each, "
          f"strategy {rows[0]['strategy']}, {sum(programs):.1f} s")


if __name__ == "__main__":
    main_lib.run(main)
