"""Train, sample and evaluate a model from a config.

    python -m experiments.main --config=configs/toy_vpsde.py --workdir=runs/x \
        --mode=train|sample|eval|all [--config.optim.learning_rate=1e-3 ...]

Training resumes from the newest checkpoint in the workdir. Everything a run
writes (metrics.jsonl, TensorBoard events, checkpoints, plots, samples) goes there.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import configuration, distributed, registry, run_config, run_loop
from experiments.experiment import Experiment
from experiments.logging import MetricsLogger
from genjax import train as train_lib
from genjax.hardware import measure_peak_flops

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
# Shared by the analysis scripts built on these flags (guidance_sweep, sampler_study),
# which can then be imported into one process; each has its own default.
NUM_SAMPLES = flags.DEFINE_integer("num", None, "Samples per guidance weight / per sampler "
                                   "(default: the script's).")
_MODE = flags.DEFINE_enum("mode", "all", ["train", "sample", "eval", "all"], "What to run.")
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
    exp = Experiment(config)
    make_step = exp.checked_first_step(
        exp.compiled_train_fn, on_ready=lambda state: run_config.commit(plan, step=int(state.step)))
    state, _ = run_loop.run(
        exp.init_state(), make_step, num_steps=tc.num_steps,
        steps_per_call=tc.steps_per_call, workdir=workdir, checkpoint_every=tc.checkpoint_every,
        keep_checkpoints=tc.keep_checkpoints, fsdp=tc.get("fsdp", 1), stop_after=stop_after,
        progress=progress, rate_metrics=_mfu_fn(exp), spike_factor=tc.get("spike_factor", 0.0),
        spike_window=tc.get("spike_window", 100))
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


def sample(config, workdir: str):
    """Draws config.sample.num samples with the EMA parameters; saves npz and a plot."""
    exp, state = _restore(config, workdir)
    kwargs = {**sampler_kwargs(config), **exp.model_kwargs(state)}
    fn = jax.jit(lambda p, k: exp.model.sample(p, k, config.sample.num, **kwargs))
    samples = np.asarray(fn(state.ema_params, jax.random.fold_in(exp.key, 11)))
    if distributed.is_writer():  # every process draws the same samples; process 0 saves them
        np.savez(os.path.join(workdir, "samples.npz"), samples=samples)
        exp.source.plot_samples(os.path.join(workdir, "samples.png"), samples,
                                title=f"{config.model.get('sde', config.family)}, {config.sample.method} sampler")
    return samples


def evaluate(config, workdir: str, *, samples=None, heatmap: bool = True):
    """The data source's evaluation (NLL and sample quality) of the EMA parameters."""
    exp, state = _restore(config, workdir)
    if samples is None and os.path.exists(os.path.join(workdir, "samples.npz")):
        samples = np.load(os.path.join(workdir, "samples.npz"))["samples"]
    writer = distributed.is_writer()  # every process computes the same numbers; process 0 writes them
    result = exp.source.evaluate(exp.model, state.ema_params, workdir, samples=samples,
                                 heatmap=heatmap and writer, log_prob_kwargs=exp.log_prob_kwargs(state))
    note = exp.likelihood_note()
    if note is not None:
        result["no_likelihood"] = note
    result["step"] = int(state.step)
    if writer:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
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
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    start_distributed()
    config, workdir = _CONFIG.value, _WORKDIR.value
    if _MODE.value in ("train", "all"):
        t0 = time.perf_counter()
        train(config, workdir, allow_changes=ALLOW_CONFIG_CHANGE.value)
        print(f"trained in {time.perf_counter() - t0:.1f} s")
    else:
        check_run(config, workdir)
    samples = None
    if _MODE.value in ("sample", "all"):
        samples = sample(config, workdir)
    if _MODE.value in ("eval", "all"):
        result = evaluate(config, workdir, samples=samples)
        print(json.dumps(result, indent=2))


def check_run(config, workdir: str, *, allow=None):
    """Validates `config` and checks it against the trained run saved in `workdir`
    (`run_config.check_workdir`), for scripts that read one; writes nothing.
    `allow`: keys that may differ (default: --allow_config_change once flags are
    parsed). Raises ConfigError."""
    if allow is None:
        allow = ALLOW_CONFIG_CHANGE.value if flags.FLAGS.is_parsed() else ()
    configuration.validate(config)
    run_config.check_workdir(workdir, config, training=False, allow=allow)


def run(main_fn=main, required=("config", "workdir")):
    """Checks --config overrides (naming a bad key and the valid ones), lets a whole
    tuple given for a key replace what the key was given before it, then runs
    `main_fn` under absl (`configuration.prepare_argv`); the entry point of every
    script built on these flags. A ConfigError (a bad override, a bad config value,
    a workdir that does not match the config, data that is not prepared) exits
    with code 2 and one line per problem, without a traceback."""
    sys.argv[:] = configuration.prepare_argv(sys.argv)
    flags.mark_flags_as_required(list(required))
    app.run(configuration.reporting_errors(main_fn))


if __name__ == "__main__":
    run()
