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
from tqdm import tqdm

from experiments import configuration, plots, registry
from experiments.checkpoint import Checkpointer
from experiments.logging import MetricsLogger, read_metrics
from genjax import train as train_lib
from genjax.hardware import measure_peak_flops

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
# Shared by the analysis scripts built on these flags (guidance_sweep, sampler_study),
# which can then be imported into one process; each has its own default.
NUM_SAMPLES = flags.DEFINE_integer("num", None, "Samples per guidance weight / per sampler "
                                   "(default: the script's).")
_MODE = flags.DEFINE_enum("mode", "all", ["train", "sample", "eval", "all"], "What to run.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU jobs).")


class Experiment:
    """What a config builds: the data source, the model, its optimizer and train function."""

    def __init__(self, config, source=None):
        """`source`: reuse an already built data source (it must be the one `config` names)."""
        self.config = config
        self.source = source if source is not None else registry.build_source(config)
        self.model = registry.build_model(config, self.source)
        opt = config.optim
        self.tx, self.lr_fn = train_lib.make_optimizer(
            learning_rate=opt.learning_rate, total_steps=config.train.num_steps,
            warmup_steps=opt.warmup_steps, schedule=opt.schedule,
            grad_clip=opt.grad_clip, weight_decay=opt.weight_decay)
        self.batch_fn = self.source.batch_fn(config.data.batch_size)
        self.key = jax.random.PRNGKey(config.seed)

    def init_state(self):
        example = self.source.example_batch(self.config.data.batch_size)
        return train_lib.init_state(self.model.init, self.tx, self.key, example)

    def train_fn(self, mesh, steps_per_call=None, unroll=1):
        return train_lib.make_train_fn(
            self.model.loss, self.tx, ema_decay=self.config.optim.ema_decay,
            steps_per_call=steps_per_call or self.config.train.steps_per_call,
            batch_fn=self.batch_fn, mesh=mesh, learning_rate_fn=self.lr_fn, unroll=unroll,
            grad_accum_steps=self.config.train.get("grad_accum_steps", 1))

    def compiled_train_fn(self, mesh):
        """jit(train_fn), or on CPU for convolutional nets the same steps one jitted
        step at a time (`train.host_loop`: XLA:CPU runs conv gradients in loops slowly)."""
        spc = self.config.train.steps_per_call
        convolutional = self.config.model.get("net", "mlp") == "unet" or self.config.family == "glow"
        if jax.default_backend() == "cpu" and convolutional:
            one = jax.jit(self.train_fn(mesh, steps_per_call=1, unroll=True), donate_argnums=0)
            return train_lib.host_loop(one, spc)
        return jax.jit(self.train_fn(mesh), donate_argnums=0)


def train(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
    """Trains (resuming from the newest checkpoint) and returns the final state.

    stop_after: stop once this many steps are done (to simulate an interruption);
    the state is checkpointed there.
    """
    exp = Experiment(config)
    tc = config.train
    if tc.checkpoint_every % tc.steps_per_call or tc.num_steps % tc.steps_per_call:
        raise ValueError(
            f"train.num_steps ({tc.num_steps}) and train.checkpoint_every ({tc.checkpoint_every}) "
            f"must be multiples of train.steps_per_call ({tc.steps_per_call})")
    ckpt = Checkpointer(workdir, keep=tc.keep_checkpoints)
    state = exp.init_state()
    restored = ckpt.restore(state)
    if restored is not None:
        state = restored
    mesh, state = place_state(state, tc.get("fsdp", 1))
    train_fn = exp.compiled_train_fn(mesh)
    utilisation = _mfu_fn(exp)
    logger = MetricsLogger(workdir)
    start = int(state.step)
    end = tc.num_steps if stop_after is None else min(stop_after, tc.num_steps)
    bar = tqdm(total=tc.num_steps, initial=start, disable=not progress, desc="train", file=sys.stdout)
    try:
        step = start
        while step < end:
            t0 = time.perf_counter()
            state, metrics = train_fn(state)
            metrics = jax.device_get(metrics)
            bad = train_lib.first_nonfinite(metrics["loss"], step)
            if bad is not None:
                raise FloatingPointError(
                    f"loss is {metrics['loss'][bad - step]} at step {bad}; stopping. "
                    f"The last checkpoint (step {ckpt.latest_step()}) is intact; "
                    f"lower optim.learning_rate or check the data.")
            step += tc.steps_per_call
            rate = tc.steps_per_call / (time.perf_counter() - t0)
            last = {k: v[-1] for k, v in metrics.items()}
            logger.write(step, {**last, "steps_per_sec": rate, **utilisation(rate)})
            bar.update(tc.steps_per_call)
            bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{rate:.0f}")
            if step % tc.checkpoint_every == 0 or step == end:
                ckpt.save(step, state)
    finally:
        bar.close()
        logger.close()
        ckpt.close()
    records = [r for r in read_metrics(logger.path) if "loss" in r]
    plots.loss_curve(os.path.join(workdir, "loss.png"), [r["step"] for r in records],
                     [r["loss"] for r in records])
    return state


def place_state(state, fsdp: int = 1):
    """(mesh, state on it): replicated over a `data` mesh of every device, or with
    fsdp > 1 sharded by `train.fsdp_shardings` over a ("data", "fsdp") mesh."""
    if not isinstance(fsdp, int) or fsdp < 1:
        raise ValueError(f"train.fsdp={fsdp!r}; expected a positive int (1: no parameter sharding)")
    if fsdp == 1:
        mesh = train_lib.default_mesh()
        return mesh, jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    mesh = train_lib.fsdp_mesh(fsdp)
    return mesh, train_lib.shard_state(state, mesh)


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
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    state = ckpt.restore(exp.init_state())
    ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {workdir!r}; run --mode=train first")
    return exp, state


# the config.sample fields each sampler reads (besides method, guidance and labels)
SAMPLER_FIELDS = {
    "pc": ("num_steps", "predictor", "corrector", "snr", "eps"),
    "ode": ("eps",),
    "ddim": ("num_steps", "eta", "eps", "discretization"),
    "dpm_solver": ("num_steps", "order", "eps", "discretization"),
    "edm_heun": ("num_steps", "eps", "discretization"),
    "ancestral": ("num_steps",),
    # ODE flows (flow matching, CNF): Tsit5 or a fixed-step solver
    "adaptive": ("rtol", "atol"),
    "euler": ("num_steps",),
    "midpoint": ("num_steps",),
    "heun": ("num_steps",),
    "rk4": ("num_steps",),
    # exact flows (RealNVP): x = F^{-1}(T z), sample() takes no method keyword
    "inverse": ("temperature",),
}


def sampler_kwargs(config):
    """Keyword arguments of `model.sample` from config.sample."""
    s = config.sample
    fields = registry.choose("sampler", s.method, SAMPLER_FIELDS)
    kwargs = {f: s[f] for f in fields if f in s}
    if "corrector" in kwargs:
        kwargs["corrector"] = kwargs["corrector"] or None
    if s.get("guidance", 0.0):
        kwargs["guidance"] = s.guidance
    if s.method == "inverse":
        return kwargs
    return dict(method=s.method, **kwargs)


def sample(config, workdir: str):
    """Draws config.sample.num samples with the EMA parameters; saves npz and a plot."""
    exp, state = _restore(config, workdir)
    kwargs = sampler_kwargs(config)
    fn = jax.jit(lambda p, k: exp.model.sample(p, k, config.sample.num, **kwargs))
    samples = np.asarray(fn(state.ema_params, jax.random.fold_in(exp.key, 11)))
    np.savez(os.path.join(workdir, "samples.npz"), samples=samples)
    exp.source.plot_samples(os.path.join(workdir, "samples.png"), samples,
                            title=f"{config.model.get('sde', config.family)}, {config.sample.method} sampler")
    return samples


def evaluate(config, workdir: str, *, samples=None, heatmap: bool = True):
    """The data source's evaluation (NLL and sample quality) of the EMA parameters."""
    exp, state = _restore(config, workdir)
    if samples is None and os.path.exists(os.path.join(workdir, "samples.npz")):
        samples = np.load(os.path.join(workdir, "samples.npz"))["samples"]
    result = exp.source.evaluate(exp.model, state.ema_params, workdir, samples=samples,
                                 heatmap=heatmap)
    result["step"] = int(state.step)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    logger = MetricsLogger(workdir)
    logger.write(int(state.step), result, prefix="eval/")
    logger.close()
    return result


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if _DISTRIBUTED.value:
        jax.distributed.initialize()  # reads the coordinator from the cluster environment
    config, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    if _MODE.value in ("train", "all"):
        t0 = time.perf_counter()
        train(config, workdir)
        print(f"trained in {time.perf_counter() - t0:.1f} s")
    samples = None
    if _MODE.value in ("sample", "all"):
        samples = sample(config, workdir)
    if _MODE.value in ("eval", "all"):
        result = evaluate(config, workdir, samples=samples)
        print(json.dumps(result, indent=2))


def run(main_fn=main):
    """Checks --config overrides (naming a bad key and the valid ones), then runs
    `main_fn` under absl; the entry point of every script built on these flags."""
    try:
        configuration.check_argv(sys.argv[1:])
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main_fn)


if __name__ == "__main__":
    run()
