"""Byte-level text for the autoregressive LM family: data, model and evaluation.

data.name selects the text:
  "stdlib"       the running Python's standard-library sources, split by file
                 (genjax.data.text; read by experiments.text_corpus), offline.
  "tfds:<name>"  a prepared TFDS text dataset (tiny_shakespeare, lm1b, ...) read
                 through `tfds.data_source` from data.data_dir: data.train_split
                 and data.validation_split, documents joined by data.separator.

Training batches are random windows {'tokens': int32 (B, seq_len + 1)} whose
positions are a function of (seed, step). The evaluation reports validation
nats/token, bits/byte and perplexity on consecutive windows, and the curve of
validation bits/byte against training time over the kept checkpoints.
"""
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import cpu_kernels, datasets, distributed, progress as progress_lib, text_corpus
from experiments.checkpoint import Checkpointer
from experiments.configuration import ConfigError
from experiments.logging import read_metrics
from genjax.autoregressive import lm as lm_lib
from genjax.data import text
from genjax.nn.transformer import Transformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def transformer_kwargs(config) -> dict:
    """The Transformer keywords config.model names (shared by training and the compressor).

    attention / layer_norm / gelu "auto" take the fused CPU kernels on a CPU where they
    build (`experiments.cpu_kernels`); the parameters are the same either way."""
    m = config.model
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={m.dtype!r}; expected one of {sorted(DTYPES)}")
    return dict(
        vocab_size=text.VOCAB_SIZE, num_layers=m.num_layers, d_model=m.d_model,
        num_heads=m.num_heads, d_ff=m.d_ff or None, max_len=m.max_len, dropout=m.dropout,
        positions=m.positions, tie_embeddings=m.tie_embeddings, dtype=DTYPES[m.dtype],
        **cpu_kernels.kernel_options(m.attention, m.get("layer_norm", "auto"), m.get("gelu", "auto")))


def build_net(config) -> Transformer:
    """The Transformer whose params the LM family trains (for cached decoding)."""
    return Transformer(**transformer_kwargs(config))


def build_lm_model(config, source=None):
    """make_lm for config.model; `sample` is ancestral sampling of config.sample.num_steps
    new bytes after config.sample.prompt at config.sample.temperature / top_k / top_p."""
    del source  # bytes: the vocabulary is fixed
    s = config.sample
    model = lm_lib.make_lm(bos_id=text.START_TOKEN, **transformer_kwargs(config))
    prompt = np.frombuffer(s.prompt.encode("utf-8"), np.uint8).astype(np.int32) if s.prompt else None

    def sample(params, key, num, *, method="ancestral", num_steps=None):
        if method != "ancestral":
            raise ConfigError(f"sample.method={method!r}; the LM samples with 'ancestral'")
        return model.sample(params, key, num, prompt=prompt, max_new_tokens=num_steps or s.num_steps,
                            temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p or None)

    return model._replace(sample=sample)


def load_text(config, split: str) -> np.ndarray:
    """uint8 byte stream of `split` ("train" or "validation") of config.data.name."""
    name = config.data.name
    if name == "stdlib":
        return text_corpus.read_stdlib_corpus(config.data.get("data_dir") or None)[split]
    if name.startswith("tfds:"):
        tfds_split = config.data.get(f"{split}_split", split)
        separator = config.data.get("separator", "").encode("utf-8")
        return datasets.load_tfds_text(name.split(":", 1)[1], tfds_split,
                                       data_dir=config.data.get("data_dir") or None,
                                       separator=separator)
    raise ConfigError(f"unknown text dataset {name!r}; expected 'stdlib' or 'tfds:<name>'")


def training_seconds(workdir: str) -> dict:
    """{step: cumulative wall seconds of the train calls up to that step}, from metrics.jsonl
    (each record's steps_per_sec covers the steps since the previous record)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    out, total, prev = {}, 0.0, 0
    for r in read_metrics(path):
        if "steps_per_sec" not in r or r["step"] <= prev:
            continue
        total += (r["step"] - prev) / r["steps_per_sec"]
        out[r["step"]] = total
        prev = r["step"]
    return out


class TextSource:
    """Byte streams for training and validation (vocabulary 256)."""

    num_classes = None

    def __init__(self, config):
        self.config = config
        self.seq_len = config.data.seq_len
        if self.seq_len > config.model.max_len:
            raise ConfigError(f"data.seq_len={self.seq_len} exceeds model.max_len={config.model.max_len}")
        self.train_tokens = load_text(config, "train")
        self._validation = None
        self.data_shape = (self.seq_len + 1,)
        if len(self.train_tokens) < self.seq_len + 1:
            raise ValueError(f"{config.data.name} train split has {len(self.train_tokens)} bytes; "
                             f"expected at least data.seq_len + 1 = {self.seq_len + 1}")

    @property
    def validation_tokens(self) -> np.ndarray:
        if self._validation is None:
            self._validation = load_text(self.config, "validation")
        return self._validation

    def batch_fn(self, batch_size):
        tokens_T = jnp.asarray(self.train_tokens)
        seq_len = self.seq_len

        def batch_fn(data_key, step):
            return text.get_batch(tokens_T, data_key, step, batch_size, seq_len)

        return batch_fn

    def train_flops_per_step(self, batch_size: int) -> int:
        """Training FLOPs of one step (6N + attention per token, Kaplan et al. 2020),
        the numerator of the MFU the driver logs."""
        return batch_size * self.seq_len * build_net(self.config).flops_per_token(n_ctx=self.seq_len)

    def example_batch(self, batch_size):
        return text.get_batch(self.train_tokens[: 4 * (self.seq_len + 1)], 0, 0, batch_size, self.seq_len)

    def plot_samples(self, path, samples, title):
        """Writes the sampled bytes as text (`<path stem>.txt`), one sample per block."""
        stem = os.path.splitext(path)[0]
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write(f"# {title}\n")
            for row in np.asarray(samples):
                f.write("=" * 72 + "\n")
                f.write(bytes(np.asarray(row, np.uint8).tolist()).decode("utf-8", errors="replace") + "\n")

    def num_eval_windows(self, num_windows=None) -> int:
        total = (len(self.validation_tokens) - 1) // self.seq_len
        return min(total, num_windows) if num_windows else total

    def validation_nats(self, model, params, num_windows=None, *, progress: bool = False) -> float:
        """Mean validation nats/token over consecutive seq_len windows (`num_windows`
        of them, evenly spaced, or all), eval.batch_size windows per forward pass;
        `progress` shows a bar over the passes."""
        windows = text.eval_windows(self.validation_tokens, self.seq_len)
        if num_windows and num_windows < len(windows):
            windows = windows[np.linspace(0, len(windows) - 1, num_windows).astype(int)]
        loss = jax.jit(lambda p, b: model.loss(p, jax.random.PRNGKey(0), b, train=False)[0])
        chunk = self.config.eval.batch_size
        total = 0.0
        with progress_lib.bar(progress_lib.num_batches(len(windows), chunk),
                              f"validation ({len(windows)} windows)", progress) as bar:
            for i in range(0, len(windows), chunk):
                part = windows[i:i + chunk]
                total += float(loss(params, {"tokens": jnp.asarray(part)})) * len(part)
                bar.update(1)
        return total / len(windows)

    def evaluate(self, model, params, workdir, samples=None, heatmap=True, log_prob_kwargs=None, step=None,
                 progress: bool = True):
        """Validation nats/token, bits/byte, perplexity (from the loss: the exact
        next-byte log-likelihood); and the validation curve (bits/byte of each kept
        checkpoint's EMA params against training seconds), written to
        validation_curve.json by the writing process. `step` (the training step of
        `params`) is accepted like every source's and not needed here; `progress`
        shows a bar over the validation batches and over the curve's checkpoints,
        and the path of the file written."""
        del samples, heatmap, log_prob_kwargs, step
        ec = self.config.eval
        t0 = time.perf_counter()
        nats = self.validation_nats(model, params, ec.num_windows, progress=progress)
        result = {
            "split": "validation",
            "nats_per_token": nats,
            "bits_per_byte": nats / math.log(2),
            "perplexity": math.exp(nats),
            "num_tokens": self.num_eval_windows(ec.num_windows) * self.seq_len,
            "eval_seconds": time.perf_counter() - t0,
        }
        if ec.curve_windows:
            curve = self.validation_curve(model, params, workdir, progress=progress)
            if curve and distributed.is_writer():  # every process computes it (restores are collective)
                path = os.path.join(workdir, "validation_curve.json")
                with open(path, "w") as f:
                    json.dump(curve, f, indent=2)
                progress_lib.wrote(path, progress)
        return result

    def validation_curve(self, model, params, workdir, *, progress: bool = False) -> list:
        """[{step, train_seconds, bits_per_byte}] for each checkpoint in the workdir,
        on eval.curve_windows evenly spaced validation windows; `progress` shows a
        bar over the checkpoints."""
        ckpt = Checkpointer(workdir)
        seconds = training_seconds(workdir)
        template = state_template(self.config)
        curve = []
        steps = sorted(ckpt.all_steps())
        with progress_lib.bar(len(steps), "validation curve", progress, unit="checkpoint") as bar:
            for step in steps:
                state = ckpt.restore(template, step)
                nats = self.validation_nats(model, state.ema_params, self.config.eval.curve_windows)
                curve.append({"step": int(step), "train_seconds": seconds.get(int(step)),
                              "bits_per_byte": nats / math.log(2)})
                bar.update(1)
        ckpt.close()
        return curve


def state_template(config):
    """A TrainState with the structure of an LM run's checkpoints (for restoring)."""
    from experiments.experiment import make_optimizer  # (experiment imports this module)
    from genjax import train as train_lib

    tx, _ = make_optimizer(config.optim, config.train.num_steps)
    example = {"tokens": jnp.zeros((1, config.data.seq_len + 1), jnp.int32)}
    model = build_lm_model(config)
    return train_lib.init_state(model.init, tx, jax.random.PRNGKey(config.seed), example)


def restore_params(workdir: str, config=None):
    """(config, EMA params, step) of the newest checkpoint of an LM run in `workdir`;
    the config is the run's config.json unless given."""
    if config is None:
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path!r} does not exist; expected the workdir of an "
                                    "experiments.main run with an LM config")
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    if config.get("family") != "lm":
        raise ValueError(f"workdir {workdir!r} holds a {config.get('family')!r} run; expected family 'lm'")
    ckpt = Checkpointer(workdir)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}; train it first "
                                    "(python -m experiments.main --mode=train)")
        state = ckpt.restore(state_template(config), step)
    finally:
        ckpt.close()
    return config, state.ema_params, int(step)
