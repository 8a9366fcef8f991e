r"""Rectified flow on 2D toy data (Liu et al. 2023): base flow, one reflow round,
one-step distillation, and how many Euler steps each needs.

    python -m experiments.reflow --config=configs/toy_reflow.py --workdir=runs/reflow \
        [--config.data.name=eight_gaussians|checkerboard|two_moons|...] \
        [--base_workdir=runs/fm_eight_gaussians]

Stages (each one loads its checkpoint from the workdir if it is complete, so a
rerun only evaluates):

1. base: flow matching on independent pairs (the 1-rectified flow) in
   --base_workdir (default <workdir>/base). When that workdir holds a run (a
   config.json, e.g. one of `python -m experiments.main
   --config=configs/toy_flow_matching.py`), the base fields (seed, family, data,
   model, optim, train) are that run's saved config, not --config's: the run
   is reused (resumed if incomplete), and --config.<base field> overrides given
   on the command line are checked against it by the resume rules of
   `experiments.run_config` (train.num_steps may extend it; data.name may not
   change). Otherwise the base is trained there by experiments.main's `train`
   from --config;
2. reflow: `reflow.num_pairs` pairs (x0, ODE_base(x0)) solved with
   reflow.pair_method, and the net trained on them from the base weights (2-rectified flow);
3. distill: the one-step map x1 = x0 + v(x0, 0) trained on pairs of the
   2-rectified flow (and, with distill.from_base, on the base pairs for comparison).

Evaluation, with the same noise for every model: sliced Wasserstein distance to
held-out data after 1, 2, 4, ... Euler steps (config.compare.euler_steps), the
straightness of base and reflowed flows, and the SWD between two data sets of the
same size (the floor). Writes reflow_results.{json,md} and reflow.png to the workdir.

The workdir's config.json (--config with the base run's fields) is the identity of
the stages trained there: a rerun with another config is refused before anything is
built (`experiments.run_config`).
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging

from experiments import main as main_lib  # defines --config (with overrides) and --workdir
from experiments import experiment, plots, registry, run_config, run_loop  # noqa: F401  (plots: headless backend)
from experiments import configuration
from experiments.configuration import ConfigError
from experiments.checkpoint import Checkpointer
from genjax import metrics as metrics_lib
from genjax import train as train_lib
from genjax.flows import matching, ode, rectified

flags.declare_key_flag("config")
flags.declare_key_flag("workdir")
flags.declare_key_flag("verbose")
flags.declare_key_flag("allow_config_change")
_BASE_WORKDIR = flags.DEFINE_string(
    "base_workdir", None, "Run directory of the base flow (default <workdir>/base); trained there if absent.")

BASE_FIELDS = ("seed", "family", "data", "model", "optim", "train")
_PAIRS_STREAM, _EVAL_STREAM, _FLOOR_STREAM, _SWD_STREAM = 31, 32, 33, 34


def command_line_keys(argv, flag: str = "config") -> list:
    """The dotted keys that argv's --config.KEY=VALUE (or --config.KEY VALUE) overrides set."""
    prefix = f"--{flag}."
    return [arg[len(prefix):].split("=", 1)[0] for arg in argv if arg.startswith(prefix)]


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def _put(config, key, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def _with_sections(into: dict, source: dict, sections) -> dict:
    """`into` with each of the top-level `sections` that `source` has taken from `source` (plain dicts)."""
    return {**into, **{k: source[k] for k in sections if k in source}}


def with_base_run(config, base_workdir, overrides=()):
    """(config, note): the config the reflow runs with, given --config and the
    base workdir.

    When base_workdir holds a run (`run_config.saved_config` is not None), the base
    fields (BASE_FIELDS) are that run's saved config (`run_config.load_run`, with
    --config supplying keys the saved one lacks), and `overrides` (dotted keys that
    the command line set) of base fields keep --config's value on top, to be
    checked against the run by `check_base_config`; `note` is one line naming
    the run. Otherwise `config` itself and None: the base is trained from it."""
    saved = run_config.saved_config(base_workdir) if os.path.isdir(base_workdir) else None
    if saved is None:
        return config, None
    if saved.get("family") != config.family:
        raise ConfigError(
            f"--base_workdir={base_workdir} holds a {saved.get('family')!r} run; the base of a reflow is a "
            f"{config.family!r} run (python -m experiments.main --config=configs/toy_flow_matching.py "
            f"--workdir={base_workdir}), or a workdir without a run, where the base is trained from --config")
    base = run_config.load_run(base_workdir, template=config)
    merged = ml_collections.ConfigDict(_with_sections(config.to_dict(), base.to_dict(), BASE_FIELDS))
    given = [k for k in overrides if k.split(".", 1)[0] in BASE_FIELDS]
    for key in given:
        _put(merged, key, _get(config, key))
    merged.lock()
    note = (f"base flow: {base_workdir} (its {run_config.CONFIG_FILE}: {base.data.name}, "
            f"{base.train.num_steps} steps)")
    if given:
        note += "; from the command line: " + ", ".join(f"{k}={_get(config, k)}" for k in given)
    return merged, note


def check_base_config(config, base_workdir, allow=()):
    """Raises ConfigError (a ValueError) listing the base fields on which the run in
    base_workdir differs from `config` (`run_config.check_workdir`)."""
    run_config.check_workdir(base_workdir, config, allow=allow, sections=BASE_FIELDS)


def load_or_train_base(config, base_workdir, allow=()):
    """(Experiment, TrainState) of the base flow: restored if complete, else trained."""
    check_base_config(config, base_workdir, allow)
    ckpt = Checkpointer(base_workdir)
    done = ckpt.latest_step() == config.train.num_steps
    ckpt.close()
    if not done:
        train_config, sections = config, BASE_FIELDS
        saved = run_config.saved_config(base_workdir)
        if saved is not None:
            # resuming a run: its identity is what its config.json holds, and the sections
            # besides the base fields (a run of experiments.main has sample, eval) stay its own
            run = run_config.load_run(base_workdir, template=config).to_dict()
            train_config = ml_collections.ConfigDict(_with_sections(run, config.to_dict(), BASE_FIELDS))
            sections = tuple(saved)
        main_lib.train(train_config, base_workdir, progress=False, allow_changes=allow,
                       identity_sections=sections)
    return main_lib._restore(config, base_workdir)


def fit(stage_dir, loss_fn, params0, batch_fn, optim, train_cfg, key):
    """Trains from params0 with the genjax trainer through the run loop (resumes from /
    saves checkpoints in stage_dir). Returns the final TrainState (its EMA
    parameters are the result)."""
    tx, lr_fn = experiment.make_optimizer(optim, train_cfg.num_steps)
    state = train_lib.init_state(lambda k, b: jax.tree_util.tree_map(jnp.copy, params0), tx, key, None)

    def make_step(mesh):
        return jax.jit(train_lib.make_train_fn(
            loss_fn, tx, ema_decay=optim.ema_decay, steps_per_call=train_cfg.steps_per_call,
            batch_fn=batch_fn, mesh=mesh, learning_rate_fn=lr_fn), donate_argnums=0)

    state, _ = run_loop.run(state, make_step, num_steps=train_cfg.num_steps,
                            steps_per_call=train_cfg.steps_per_call, workdir=stage_dir,
                            checkpoint_every=train_cfg.checkpoint_every,
                            keep_checkpoints=train_cfg.keep_checkpoints, desc=os.path.basename(stage_dir))
    return state


def pair_solver_kwargs(rc):
    """`ode.ode_sample` keywords of the teacher ODE solve for the reflow pairs."""
    if rc.pair_method == "adaptive":
        return dict(method="adaptive", rtol=rc.pair_rtol, atol=rc.pair_atol)
    return dict(method=rc.pair_method, num_steps=rc.pair_num_steps)


def make_pairs(stage_dir, velocity_of, params, config, key):
    """Pairs (x0, ODE(x0)) of a flow, solved in chunks; cached in stage_dir."""
    path = os.path.join(stage_dir, "pairs.npz")
    rc = config.reflow
    if os.path.exists(path):
        cached = np.load(path)
        if len(cached["x0"]) == rc.num_pairs:
            return jnp.asarray(cached["x0"]), jnp.asarray(cached["x1"])
    os.makedirs(stage_dir, exist_ok=True)
    solver = pair_solver_kwargs(rc)
    solve = jax.jit(lambda p, k, n: rectified.reflow_pairs(k, velocity_of(p), n, (2,), **solver),
                    static_argnums=2)
    x0s, x1s = [], []
    for start in range(0, rc.num_pairs, rc.pair_chunk):
        n = min(rc.pair_chunk, rc.num_pairs - start)
        x0, x1 = solve(params, jax.random.fold_in(key, start), n)
        x0s.append(np.asarray(x0))
        x1s.append(np.asarray(x1))
    x0, x1 = np.concatenate(x0s), np.concatenate(x1s)
    np.savez(path, x0=x0, x1=x1)
    return jnp.asarray(x0), jnp.asarray(x1)


def _done(seconds, stage, t0):
    seconds[stage] = time.perf_counter() - t0
    print(f"{stage}: {seconds[stage]:.1f} s", flush=True)


def run_reflow(config, workdir, base_workdir, allow=()):
    """All stages and the evaluation; returns the results dict and the figure's data.
    `allow`: config keys that may differ from the base run's (--allow_config_change)."""
    seconds = {}
    t0 = time.perf_counter()
    exp, base_state = load_or_train_base(config, base_workdir, allow)
    _done(seconds, "base", t0)
    # the base model's network (unconditional), rebuilt to evaluate and fine-tune its parameters
    net = registry.choose("net", config.model.get("net", "mlp"), registry.NETS)(config.model, None)
    velocity_of = lambda p: (lambda x, t: net.apply(p, x, t))
    key = jax.random.fold_in(exp.key, 101)
    base_params = base_state.ema_params

    # reflow: the 2-rectified flow on the base flow's pairs
    t0 = time.perf_counter()
    reflow_dir = os.path.join(workdir, "reflow")
    base_pairs = make_pairs(reflow_dir, velocity_of, base_params, config, jax.random.fold_in(key, _PAIRS_STREAM))
    _done(seconds, "base_pairs", t0)
    t0 = time.perf_counter()
    reflow_model = matching.make_flow_matching_model(net, data_shape=(2,), paired=True)
    bs = config.data.batch_size
    reflow_state = fit(reflow_dir, reflow_model.loss, base_params, rectified.pairs_batch_fn(*base_pairs, bs),
                       config.reflow.optim, config.reflow.train, jax.random.fold_in(key, 1))
    reflow_params = reflow_state.ema_params
    _done(seconds, "reflow_train", t0)

    # one-step distillation of the 2-rectified flow (and of the base flow)
    distill_model = rectified.make_distillation_model(net, data_shape=(2,))
    distill_dir = os.path.join(workdir, "distill")
    t0 = time.perf_counter()
    reflow_pairs = make_pairs(distill_dir, velocity_of, reflow_params, config,
                              jax.random.fold_in(key, _PAIRS_STREAM + 100))
    _done(seconds, "reflow_pairs", t0)
    t0 = time.perf_counter()
    distilled = {"distilled 2-rectified": fit(
        distill_dir, distill_model.loss, reflow_params, rectified.pairs_batch_fn(*reflow_pairs, bs),
        config.distill.optim, config.distill.train, jax.random.fold_in(key, 2)).ema_params}
    if config.distill.from_base:
        distilled["distilled base"] = fit(
            os.path.join(workdir, "distill_base"), distill_model.loss, base_params,
            rectified.pairs_batch_fn(*base_pairs, bs), config.distill.optim, config.distill.train,
            jax.random.fold_in(key, 3)).ema_params
    _done(seconds, "distill_train", t0)

    # evaluation, the same noise for every model
    t0 = time.perf_counter()
    cc = config.compare
    data = exp.source.held_out(cc.num)
    swd_key = jax.random.fold_in(key, _SWD_STREAM)
    swd = jax.jit(lambda x: metrics_lib.sliced_wasserstein(swd_key, x, data))
    other_data = exp.source.density.sample(jax.random.fold_in(key, _FLOOR_STREAM), cc.num)
    x0 = jax.random.normal(jax.random.fold_in(key, _EVAL_STREAM), (cc.num, 2))
    flows = {"base (1-rectified)": base_params, "reflow (2-rectified)": reflow_params}
    rows, pictures = [], {"data": np.asarray(data)}
    euler = jax.jit(lambda p, n: ode.ode_sample(None, velocity_of(p), x0.shape, method="euler",
                                                 num_steps=n, x_init=x0)[0], static_argnums=1)
    straight = jax.jit(lambda p: rectified.straightness(
        None, velocity_of(p), x0[:cc.straightness_num], num_steps=cc.straightness_steps)[0])
    traj = jax.jit(lambda p: rectified.euler_trajectories(
        velocity_of(p), x0[:cc.num_trajectories], cc.straightness_steps))
    for name, params in flows.items():
        row = {"model": name, "swd": {}}
        for n in cc.euler_steps:
            samples = euler(params, int(n))
            row["swd"][str(int(n))] = float(swd(samples))
            pictures[(name, int(n))] = np.asarray(samples)
        row["straightness"] = float(straight(params))
        pictures[(name, "trajectories")] = np.asarray(traj(params))
        rows.append(row)
    one = jax.jit(lambda p: rectified.one_step(velocity_of(p), x0))
    for name, params in distilled.items():
        samples = one(params)
        rows.append({"model": name, "swd": {"1": float(swd(samples))}})
        pictures[(name, 1)] = np.asarray(samples)
    _done(seconds, "evaluate", t0)

    base_row, reflow_row = rows[0], rows[1]
    results = {
        "dataset": config.data.name,
        "rows": rows,
        "swd_floor": float(swd(other_data)),
        "one_step_swd_ratio_base_over_reflow": base_row["swd"]["1"] / reflow_row["swd"]["1"],
        "straightness_ratio_base_over_reflow": base_row["straightness"] / reflow_row["straightness"],
        "num_pairs": int(config.reflow.num_pairs),
        "num_eval": int(cc.num),
        "steps": {"base": int(base_state.step), "reflow": int(reflow_state.step),
                  "distill": int(config.distill.train.num_steps)},
        "seconds": seconds,
    }
    return results, pictures


def to_markdown(results, config):
    steps = [str(int(n)) for n in config.compare.euler_steps]
    lines = [
        f"dataset: {results['dataset']}; sliced Wasserstein distance (SWD) of {results['num_eval']} samples "
        f"to held-out data, the same noise for every model; data-vs-data SWD floor "
        f"{results['swd_floor']:.3f}",
        "",
        "| model | " + " | ".join(f"SWD, {n} Euler step{'s' if n != '1' else ''}" for n in steps)
        + " | straightness |",
        "|---" * (len(steps) + 2) + "|",
    ]
    for r in results["rows"]:
        cells = [f"{r['swd'][n]:.3f}" if n in r["swd"] else "" for n in steps]
        s = f"{r['straightness']:.4f}" if "straightness" in r else ""
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {s} |")
    lines += [
        "",
        f"one-step SWD, base / reflow: {results['one_step_swd_ratio_base_over_reflow']:.1f}x; "
        f"straightness, base / reflow: {results['straightness_ratio_base_over_reflow']:.1f}x",
        f"(distilled rows: one network evaluation x1 = x0 + v(x0, 0); "
        f"straightness: E int ||(X1 - X0) - v(X_t, t)||^2 dt, {config.compare.straightness_steps} Euler steps)",
    ]
    return "\n".join(lines) + "\n"


def figure(path, pictures, results):
    """Top: data and one-step samples of every model; bottom: Euler trajectories and
    4-step samples of the base and reflowed flows. Every panel is the data plane
    (x1, x2) with a legend saying what its points are. Returns the (closed) Figure."""
    import matplotlib.pyplot as plt  # experiments.plots has selected the Agg backend

    lim = 1.1 * float(np.quantile(np.abs(pictures["data"]), 0.999))
    base, reflow = "base (1-rectified)", "reflow (2-rectified)"
    swd1 = {r["model"]: r["swd"]["1"] for r in results["rows"]}
    n_data = len(pictures["data"])
    # (title, points, legend label of the points)
    top = [(f"held-out data ({n_data} points)", pictures["data"], "data")] + [
        (f"{name}\n1 step, SWD {swd1[name]:.3f}", pictures[(name, 1)],
         "one network evaluation" if name.startswith("distilled") else "1 Euler step")
        for name in swd1 if (name, 1) in pictures]
    flows = ((base, results["rows"][0]), (reflow, results["rows"][1]))
    bottom = [(f"{name}\ntrajectories, straightness {r['straightness']:.4f}", pictures[(name, "trajectories")], None)
              for name, r in flows]
    if (base, 4) in pictures:
        bottom += [(f"{name}\n4 Euler steps, SWD {r['swd']['4']:.3f}", pictures[(name, 4)], "4 Euler steps")
                   for name, r in flows]
    cols = max(len(top), len(bottom))
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 7.6), squeeze=False)
    for row, panels in ((axes[0], top), (axes[1], bottom)):
        for ax, (title, points, label) in zip(row, panels):
            if points.ndim == 3:  # (steps + 1, N, 2) Euler trajectories from t = 0 to t = 1
                ax.plot(points[:, :, 0], points[:, :, 1], lw=0.5, color="tab:blue", alpha=0.6)
                ax.lines[0].set_label(f"path ({len(points) - 1} Euler steps)")
                ax.scatter(points[0, :, 0], points[0, :, 1], s=3, color="gray", label="noise $x_0$ (t = 0)")
                ax.scatter(points[-1, :, 0], points[-1, :, 1], s=3, color="tab:red", label="sample $x_1$ (t = 1)")
            else:
                ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.4,
                           color="gray" if label == "data" else "tab:blue", label=f"{label} ({len(points)})")
            plots.plane_axes(ax, -lim, lim)
            ax.tick_params(labelsize=6)
            ax.set_title(title, fontsize=8)
            ax.legend(fontsize=6, loc="upper right", markerscale=4, framealpha=0.7)
        for ax in row[len(panels):]:
            ax.set_visible(False)
    fig.suptitle(f"rectified flow on {results['dataset']}: samples from the same noise for every model "
                 f"(SWD: sliced Wasserstein distance to held-out data, floor {results['swd_floor']:.3f})",
                 fontsize=9)
    return plots.save(fig, path)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config, workdir = main_lib._CONFIG.value, main_lib._WORKDIR.value
    base_workdir = _BASE_WORKDIR.value or os.path.join(workdir, "base")
    allow = main_lib.ALLOW_CONFIG_CHANGE.value
    configuration.validate(config)
    config, note = with_base_run(config, base_workdir, command_line_keys(sys.argv[1:]))
    if note is not None:
        print(note, flush=True)
        configuration.validate(config)
    plan = run_config.check_workdir(workdir, config, allow=allow)
    check_base_config(config, base_workdir, allow)
    run_config.commit(plan)
    results, pictures = run_reflow(config, workdir, base_workdir, allow=allow)
    results["base_workdir"] = base_workdir
    with open(os.path.join(workdir, "reflow_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = to_markdown(results, config)
    with open(os.path.join(workdir, "reflow_results.md"), "w") as f:
        f.write(table)
    figure(os.path.join(workdir, "reflow.png"), pictures, results)
    print(table)


if __name__ == "__main__":
    main_lib.run(main, required=("config", "workdir"))
