"""Train, sample and evaluate a model from a config.

  python -m experiments.main --config=configs/toy_vpsde.py --workdir=runs/x
      [--mode=train|sample|eval|all] [--config.optim.learning_rate=1e-3 ...]
  python -m experiments.main --mode=sample --workdir=runs/x [--config.sample.num=500]
  python -m experiments.main --list

--config.KEY=VALUE sets any key of the config file (a misspelled key lists the
valid ones). Training resumes from the newest checkpoint in the workdir; the
workdir's config.json is the run's config, so --mode=sample|eval need only
--workdir and may set only eval.*, sample.*, compress.*, compare.* and
data.data_dir (eval.params=ema|raw picks the weights). Everything a run writes
(config.json, metrics.jsonl, TensorBoard events, checkpoints, plots, samples,
eval.json) goes to the workdir.
"""
import ast
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import configuration, distributed, plots, registry, run_config, run_loop
from experiments.experiment import Experiment
from experiments.logging import MetricsLogger
from genjax import train as train_lib
from genjax.hardware import measure_peak_flops

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file (python -m experiments.main --list lists them; FILE:variant picks a variant); "
    "--config.KEY=VALUE sets any of its keys. A script that reads a trained run takes the run's config "
    "from its workdir and may leave --config out.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory: config.json, checkpoints, metrics, plots, "
                               "samples and evaluation.")
_MODE = flags.DEFINE_enum("mode", "all", ["train", "sample", "eval", "all"],
                          "train (resuming), sample (samples.npz/png), eval (eval.json), or all three.")
_LIST = flags.DEFINE_bool("list", False, "Print the model families and the configs in configs/, one line "
                          "each, and exit.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the INFO logs of JAX, orbax and absl (hidden by default).")
ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "Config keys (or sections) that may differ from the run saved in "
    "--workdir when it resumes, e.g. optim.learning_rate,model.dropout; each change is recorded in "
    "config_changes.jsonl (experiments.run_config lists the keys that may change without it).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start JAX's multi-process runtime first (experiments.distributed): from "
    "--coordinator, --num_processes and --process_id, or without them from the cluster's environment "
    "(SLURM, Open MPI, Cloud TPU).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "With --distributed: HOST:PORT where process 0 listens, the same on every "
    "process (one machine: 127.0.0.1 and a free port); default $JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index, 0..num_processes-1; process 0 "
    "writes the run's logs, plots, samples and evaluation.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None, "With --distributed: the indices of this machine's devices that this "
    "process uses (e.g. 0,1); default all of them, or $JAX_LOCAL_DEVICE_IDS.")


def define_num(help_text: str) -> None:
    """Defines --num (an integer, default None: the script's own default) once, for
    the analysis scripts that take a sample count (guidance_sweep, sampler_study,
    gan_study, ebm_study), which the tests import into one process; read it as
    `flags.FLAGS.num`. Each script declares it, --config and --workdir its key
    flags (`flags.declare_key_flag`), so its one-screen --help lists them."""
    if "num" not in flags.FLAGS:
        flags.DEFINE_integer("num", None, help_text)


def define_path_flag(name: str) -> None:
    """Defines --<name> (a path, default None: the script's own default) once, for
    the analysis scripts that share the name (--out: compare, sampler_study;
    --figure: gan_study, ebm_study), which the tests import into one process; read
    it as `flags.FLAGS[name].value` and declare it a key flag in the script
    (`flags.declare_key_flag(name)`) so its --help lists it."""
    if name not in flags.FLAGS:
        flags.DEFINE_string(name, None, "A path: what it holds and its default are in the usage line above.")


def train(config, workdir: str, *, stop_after: int | None = None, progress: bool = True,
          allow_changes=(), identity_sections=None):
    """Trains (resuming from the newest checkpoint) and returns the final state.

    Before anything is built the config is validated (`configuration.validate`)
    and checked against the run saved in the workdir (`run_config.check_workdir`;
    `allow_changes`: keys that may differ besides those that always may;
    `identity_sections`: the top-level keys that make the run's identity, default
    all); config.json is written, or the accepted changes recorded, once the
    checkpoint is restored and matches the model (`Experiment.checked_first_step`).
    Each raises ConfigError.
    stop_after: stop once this many steps are done (to simulate an interruption);
    the state is checkpointed there.
    """
    configuration.validate(config)
    tc = config.train
    if jax.device_count() % tc.get("fsdp", 1):
        raise configuration.ConfigError(f"train.fsdp={tc.fsdp}; expected a divisor of the {jax.device_count()} "
                                        f"devices (1: no parameter sharding)")
    plan = run_config.check_workdir(workdir, config, allow=allow_changes, sections=identity_sections)
    for line in configuration.warnings(config):
        print(f"warning: {line}", file=sys.stderr)
    exp = Experiment(config)
    make_step = exp.checked_first_step(
        exp.compiled_train_fn, on_ready=lambda state: run_config.commit(plan, step=int(state.step)))
    state, _ = run_loop.run(
        exp.init_state(), make_step, num_steps=tc.num_steps,
        steps_per_call=tc.steps_per_call, workdir=workdir, checkpoint_every=tc.checkpoint_every,
        keep_checkpoints=tc.keep_checkpoints, fsdp=tc.get("fsdp", 1), stop_after=stop_after,
        progress=progress, rate_metrics=_mfu_fn(exp), spike_factor=tc.get("spike_factor", 0.0),
        spike_window=tc.get("spike_window", 100), log_every=tc.get("log_every"))
    if int(state.step) > tc.num_steps:
        print(f"note: the run in {workdir} is at step {int(state.step)}, past train.num_steps={tc.num_steps}; "
              f"nothing was trained", file=sys.stderr)
    return state


place_state = run_loop.place_state


def _mfu_fn(exp):
    """rate -> {"mfu": ...} for sources that count their training FLOPs (the LM),
    against train.peak_flops, or a peak measured now by `genjax.hardware.measure_peak_flops`
    when that is 0 (Chowdhery et al. 2022, App. B); {} for other sources."""
    flops_of = getattr(exp.source, "train_flops_per_step", None)
    if flops_of is None:
        return lambda rate: {}
    flops_per_step = flops_of(exp.config.data.batch_size)
    peak = exp.config.train.get("peak_flops", 0.0)
    if not peak:
        peak = measure_peak_flops(dtype=jnp.dtype(exp.config.model.get("dtype", "float32")))
    return lambda rate: {"mfu": train_lib.mfu(rate, flops_per_step, peak), "peak_flops": peak}


def _restore(config, workdir):
    exp = Experiment(config)
    return exp, exp.restore(workdir)


sampler_kwargs = registry.sampler_kwargs


def eval_params(config, state):
    """The weights sampled and evaluated: the EMA (config.eval.params = "ema", the
    default) or the raw trained parameters ("raw")."""
    return state.params if config.eval.get("params", "ema") == "raw" else state.ema_params


def sample(config, workdir: str, *, verbose: bool = True):
    """Draws config.sample.num samples with the weights config.eval.params names
    (EMA by default); saves samples.npz and samples.png."""
    exp, state = _restore(config, workdir)
    kwargs = {**sampler_kwargs(config), **exp.model_kwargs(state)}
    which = config.eval.get("params", "ema")
    say = print if verbose and distributed.is_writer() else (lambda *a, **k: None)
    say(f"sampling {config.sample.num} with the {config.sample.method} sampler ({which} weights, step "
        f"{int(state.step)}) ...", flush=True)
    t0 = time.perf_counter()
    fn = jax.jit(lambda p, k: exp.model.sample(p, k, config.sample.num, **kwargs))
    samples = np.asarray(fn(eval_params(config, state), jax.random.fold_in(exp.key, 11)))
    if distributed.is_writer():  # every process draws the same samples; process 0 saves them
        paths = [os.path.join(workdir, "samples.npz"), os.path.join(workdir, "samples.png")]
        np.savez(paths[0], samples=samples)
        title = plots.sample_title(config.model.get("sde", config.family), config.sample.method,
                                   num_steps=kwargs.get("num_steps"), guidance=kwargs.get("guidance"),
                                   step=int(state.step), params=which)
        exp.source.plot_samples(paths[1], samples, title=title)
        say(f"sampled in {time.perf_counter() - t0:.1f} s; wrote {', '.join(paths)}", flush=True)
    return samples


def evaluate(config, workdir: str, *, samples=None, heatmap: bool = True, verbose: bool = True):
    """The data source's evaluation (NLL and sample quality) of the weights
    config.eval.params names (EMA by default); writes eval.json."""
    exp, state = _restore(config, workdir)
    if samples is None and os.path.exists(os.path.join(workdir, "samples.npz")):
        samples = np.load(os.path.join(workdir, "samples.npz"))["samples"]
    writer = distributed.is_writer()  # every process computes the same numbers; process 0 writes them
    if verbose and writer:
        print(f"evaluating step {int(state.step)} ({config.eval.get('params', 'ema')} weights) ...", flush=True)
    result = exp.source.evaluate(exp.model, eval_params(config, state), workdir, samples=samples,
                                 heatmap=heatmap and writer, log_prob_kwargs=exp.log_prob_kwargs(state),
                                 step=int(state.step), progress=verbose)
    result.update(exp.family.evaluations(config, exp.source, exp.model, eval_params(config, state),
                                         exp.model_kwargs(state), verbose, result))
    note = exp.likelihood_note()
    if note is not None:
        result["no_likelihood"] = note
    result["step"] = int(state.step)
    result["params"] = config.eval.get("params", "ema")
    if writer:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
        if verbose:
            print(f"wrote {os.path.join(workdir, 'eval.json')}", flush=True)
        logger = MetricsLogger(workdir)
        logger.write(int(state.step), result, prefix="eval/")
        logger.close()
    return result


def start_distributed() -> None:
    """With --distributed, starts the multi-process runtime from the explicit flags
    or the cluster's environment (before any other JAX call). A bad or incomplete
    set of flags, or one given without --distributed, exits with code 2 and one
    line naming the value and what was expected."""
    explicit = {"--coordinator": _COORDINATOR.value, "--num_processes": _NUM_PROCESSES.value,
                "--process_id": _PROCESS_ID.value, "--local_device_ids": _LOCAL_DEVICE_IDS.value}
    try:
        if not _DISTRIBUTED.value:
            given = [f"{name}={value}" for name, value in explicit.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} given without --distributed; add --distributed to "
                                 f"run as one of several processes, or drop them")
            return
        try:
            device_ids = [int(i) for i in _LOCAL_DEVICE_IDS.value or ()]
        except ValueError:
            raise ValueError(f"--local_device_ids={','.join(_LOCAL_DEVICE_IDS.value)}; expected "
                             f"comma-separated device indices, e.g. 0,1") from None
        distributed.initialize(coordinator=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value, local_device_ids=device_ids or None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv):
    del argv
    if _LIST.value:
        print(listing())
        return
    start_distributed()
    config, workdir = _CONFIG.value, _WORKDIR.value
    run_config.check_directory(workdir)
    if _MODE.value in ("train", "all"):
        if config is None:
            raise configuration.ConfigError("--config is not set; training needs a config file, e.g. "
                                            "--config=configs/toy_vpsde.py (--list lists them)")
        print(describe_start(config, workdir), flush=True)
        t0 = time.perf_counter()
        train(config, workdir, allow_changes=ALLOW_CONFIG_CHANGE.value)
        print(f"trained in {time.perf_counter() - t0:.1f} s")
    else:
        config = trained_config(workdir)
        print(f"config: {os.path.join(workdir, run_config.CONFIG_FILE)} (the trained run's)"
              + "".join(f", {k}={v}" for k, v in COMMAND_LINE_OVERRIDES.items()), flush=True)
    samples = None
    if _MODE.value in ("sample", "all"):
        samples = sample(config, workdir)
    if _MODE.value in ("eval", "all"):
        result = evaluate(config, workdir, samples=samples)
        print(json.dumps(result, indent=2))


def describe_start(config, workdir: str) -> str:
    """What a training start will do, in a few lines: the family, the config file and
    its command-line overrides, the step budget, and where its config is written."""
    lines = [f"{config.family} run in {workdir}: {config.train.num_steps} steps of batch "
             f"{config.data.get('batch_size', '?')} on {config.data.get('name', 'its data')}"]
    if COMMAND_LINE_OVERRIDES:
        lines.append("  overrides: " + ", ".join(f"{k}={v}" for k, v in COMMAND_LINE_OVERRIDES.items()))
    lines.append(f"  the whole config: {os.path.join(workdir, run_config.CONFIG_FILE)} (written at the first step)")
    return "\n".join(lines)


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def listing(config_dir: str = CONFIG_DIR) -> str:
    """The model families (registry.FAMILIES) and the runnable configs in config_dir
    (those with get_config, not the shared base_*/common modules), one line each:
    name and the first line of its docstring."""
    lines = ["families (config.family):"]
    for name, family in registry.FAMILIES.items():
        lines.append(f"  {name:14s} {_first_sentence(family.build.__doc__)}")
    lines.append(f"configs ({os.path.relpath(config_dir)}/, --config=PATH[:variant]):")
    for file in sorted(os.listdir(config_dir)):
        if not file.endswith(".py") or file.startswith(("base_", "common", "_")):
            continue
        with open(os.path.join(config_dir, file)) as f:
            text = f.read()
        if "def get_config" not in text:
            continue
        lines.append(f"  {file:26s} {_first_sentence(ast.get_docstring(ast.parse(text)))}")
    return "\n".join(lines)


def _first_sentence(doc, width: int = 100) -> str:
    """The first sentence of a docstring on one line, cut to `width` characters."""
    text = " ".join((doc or "").split())
    end = re.search(r"(?<! al)\. ", text)  # not at "et al. "
    text = text if end is None else text[:end.start() + 1]
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


# --config.KEY=VALUE overrides as given on the command line, {KEY: text}; read by
# `trained_config`, which applies only these to a trained run's saved config.
COMMAND_LINE_OVERRIDES: dict = {}


def _parse_override(text: str, like):
    """An override's text as a value (Python literal, else the string), a float
    where the saved value `like` is one."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def trained_config(workdir: str):
    """The config of the trained run in `workdir`, for a start that only reads it
    (--mode=sample|eval, the analysis scripts): its saved config.json, plus the
    command line's --config.KEY=VALUE overrides, which may set only sampling and
    evaluation keys (`run_config.load_run`; any other is a ConfigError naming it).
    --config may be left out; when given, it must be the run's family and supplies
    keys the saved config lacks. Nothing is written."""
    template = _CONFIG.value
    saved = run_config.saved_config(workdir) if os.path.isdir(workdir or "") else None
    flat_template = configuration.flatten(template) if template is not None else {}
    flat_saved = configuration.flatten(saved or {})
    overrides = {}
    for key, text in COMMAND_LINE_OVERRIDES.items():
        overrides[key] = (flat_template[key] if key in flat_template
                          else _parse_override(text, flat_saved.get(key)))
    config = run_config.load_run(workdir, overrides, template=template)
    configuration.validate(config)
    return config


def check_run(config, workdir: str, *, allow=None):
    """Validates `config` and checks it against the trained run saved in `workdir`
    (`run_config.check_workdir`), for scripts that read one; writes nothing.
    `allow`: keys that may differ (default: --allow_config_change once flags are
    parsed). Raises ConfigError."""
    if allow is None:
        allow = ALLOW_CONFIG_CHANGE.value if flags.FLAGS.is_parsed() else ()
    configuration.validate(config)
    run_config.check_workdir(workdir, config, training=False, allow=allow)


def _split_overrides(argv) -> list:
    """Records the --config.KEY=VALUE overrides of argv in COMMAND_LINE_OVERRIDES and
    returns argv, without them when no --config file is given (there is then no
    config for absl to apply them to; `trained_config` applies them)."""
    COMMAND_LINE_OVERRIDES.clear()
    has_file = any(a.startswith("--config=") for a in argv[1:])
    kept = []
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            key, text = arg[len("--config."):].split("=", 1)
            COMMAND_LINE_OVERRIDES[key] = text
            if not has_file:
                continue
        kept.append(arg)
    return kept


def quiet_logs(verbose: bool) -> None:
    """Hides the INFO logs of JAX (e.g. "Unable to initialize backend 'tpu'"), orbax
    (every save and restore) and absl unless verbose; warnings and errors stay."""
    import logging as python_logging

    level = python_logging.INFO if verbose else python_logging.WARNING
    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    for name in ("jax", "jax._src.xla_bridge", "orbax", "absl", "etils"):
        python_logging.getLogger(name).setLevel(level)


def run(main_fn=None, required=()):
    """Checks --config overrides (naming a bad key and the valid ones), lets a whole
    tuple given for a key replace what the key was given before it, then runs
    `main_fn` (default `main`) under absl (`configuration.prepare_argv`); the entry
    point of every script built on these flags. A ConfigError (a bad override, a
    bad config value, a workdir that does not match the config, data that is not
    prepared) exits with code 2 and one line per problem, without a traceback."""
    sys.argv[:] = _split_overrides(configuration.prepare_argv(sys.argv))
    flags.mark_flags_as_required(list(required))
    main_fn = configuration.reporting_errors(main_fn or main)

    def quiet_main(argv):
        quiet_logs(_VERBOSE.value)
        return main_fn(argv)

    app.run(quiet_main)


if __name__ == "__main__":
    run()
