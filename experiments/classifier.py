"""A digits classifier for FID-like scores of generated 8x8 digits.

    python -m experiments.classifier [--cache_dir=DIR] [--num_steps=N] [--seed=S]

trains `genjax.nn.classifier.DigitsClassifier` on the train split of the 8x8
digits (with random shifts of up to one pixel), reports val and test accuracy,
and the Fréchet distances that put generative models' scores in scale, all
against the train set: the held-out test (447) and val (350) digits (what a
generator of new digits like the data's reaches), a random 447-image subset
of the train set itself (the finite-sample bias alone) and 447 i.i.d. uniform
noise images.

Input scaling: the 17 grey levels k = 0..16 map to the centres of 17 equal bins
of [-1, 1], -1 + 2 (k + 0.5) / 17 (`classifier_input`): the centre of the
interval that uniform dequantisation spreads level k over, so continuous
models of the digits should use the same map. Generated images are given to
this module as integer levels.
"""
import hashlib
import json
import math
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from experiments import progress as progress_lib, run_loop
from experiments.datasets import DIGITS_CLASSES, DIGITS_LEVELS, load_digits
from genjax import metrics as metrics_lib
from genjax import train as train_lib
from genjax.nn.classifier import DigitsClassifier

# Bump when the training code changes in a way the hyperparameters do not show.
_VERSION = 1

DEFAULTS = dict(
    seed=0,
    num_steps=1500,
    batch_size=64,
    learning_rate=2e-3,
    max_shift=1,
    channels=(32, 64),
    feature_dim=64,
    dropout=0.5,
)


def classifier_input(x_int):
    """Integer grey levels 0..16 -> float32 bin centres in (-1, 1)."""
    return (-1.0 + 2.0 * (jnp.asarray(x_int, jnp.float32) + 0.5) / DIGITS_LEVELS).astype(jnp.float32)


def make_net(channels=DEFAULTS["channels"], feature_dim=DEFAULTS["feature_dim"],
             dropout=DEFAULTS["dropout"]) -> DigitsClassifier:
    return DigitsClassifier(num_classes=DIGITS_CLASSES, channels=tuple(channels),
                            feature_dim=feature_dim, dropout=dropout)


def shift_images(key, x_NHWC, max_shift: int, fill: float):
    """Each image moved by an independent random offset in [-max_shift, max_shift]^2,
    the uncovered border filled with `fill` (the background)."""
    if max_shift == 0:
        return x_NHWC
    n, h, w, c = x_NHWC.shape
    s = max_shift
    padded = jnp.pad(x_NHWC, ((0, 0), (s, s), (s, s), (0, 0)), constant_values=fill)
    offsets_N2 = jax.random.randint(key, (n, 2), 0, 2 * s + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets_N2)


def _accuracy(net, params, x_int, labels):
    logits, _ = jax.jit(net.apply)(params, classifier_input(x_int))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def train_digits_classifier(*, progress: bool = False, **hyperparams):
    """Trains the classifier; returns (params, metrics) with val/test accuracy,
    the final training loss and the training time in seconds (`progress`: a bar
    over the training steps).

    Keyword arguments override DEFAULTS (seed, num_steps, batch_size,
    learning_rate, max_shift, channels, feature_dim, dropout). Adam with a
    cosine-decayed learning rate, trained by `genjax.train`; the batch and dropout
    keys of step s are functions of the seed and s, so a run is a function of its
    hyperparameters.
    """
    unknown = sorted(set(hyperparams) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; expected some of {sorted(DEFAULTS)}")
    hp = {**DEFAULTS, **hyperparams}
    net = make_net(hp["channels"], hp["feature_dim"], hp["dropout"])
    x_train, y_train = load_digits("train")
    x_train, y_train = classifier_input(x_train), jnp.asarray(y_train)
    background = float(classifier_input(0))

    # The key streams of the first version (batch: fold_in(fold_in(k, s), 0), dropout:
    # fold_in(fold_in(k, s), 1), k the run key of the seed), not the trainer's own,
    # so that the classifier behind every FD in docs/RESULTS.md stays the same: the
    # batch carries its step's dropout key to the loss.
    run_key = jax.random.split(jax.random.key(hp["seed"]))[1]

    def batch_fn(data_key, step):
        del data_key
        step_key = jax.random.fold_in(run_key, step)
        index_key, shift_key = jax.random.split(jax.random.fold_in(step_key, 0))
        idx = jax.random.randint(index_key, (hp["batch_size"],), 0, x_train.shape[0])
        x = shift_images(shift_key, x_train[idx], hp["max_shift"], background)
        return x, y_train[idx], jax.random.fold_in(step_key, 1)

    def loss_fn(params, key, batch):
        del key
        x, y, dropout_key = batch
        logits, _ = net.apply(params, x, train=True, rngs={"dropout": dropout_key})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    optimizer = optax.adam(optax.cosine_decay_schedule(hp["learning_rate"], hp["num_steps"]))
    start = time.perf_counter()
    state = train_lib.init_state(lambda key, batch: net.init(key, batch), optimizer,
                                 jax.random.key(hp["seed"]), x_train[:2])

    def make_step(mesh):
        # One jitted step driven from Python: XLA:CPU runs convolution gradients
        # inside a while loop (lax.scan) tens of times slower than outside one.
        one = jax.jit(train_lib.make_train_fn(loss_fn, optimizer, batch_fn=batch_fn, unroll=True),
                      donate_argnums=0)
        return train_lib.host_loop(one, steps_per_call)

    steps_per_call = math.gcd(hp["num_steps"], 100)
    state, history = run_loop.run(state, make_step, num_steps=hp["num_steps"],
                                  steps_per_call=steps_per_call, place=False, progress=progress,
                                  desc="digits classifier")
    params = state.params
    losses = history["loss"]
    train_loss = float(np.mean(losses[-50:]))
    seconds = time.perf_counter() - start
    metrics = {"train_loss": train_loss, "train_seconds": seconds}
    for split in ("val", "test"):
        x, y = load_digits(split)
        metrics[f"{split}_accuracy"] = _accuracy(net, params, x, y)
    return params, metrics


def hyperparams_key(**hyperparams) -> str:
    """A short hash of the full hyperparameters (defaults filled in) and the code version."""
    hp = {**DEFAULTS, **hyperparams, "version": _VERSION}
    hp["channels"] = list(hp["channels"])
    return hashlib.sha256(json.dumps(hp, sort_keys=True).encode()).hexdigest()[:16]


def _save_atomic(path: str, params) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load(path: str):
    with np.load(path) as data:
        flat = {k: jnp.asarray(data[k]) for k in data.files}
    return traverse_util.unflatten_dict(flat, sep="/")


def load_or_train(cache_dir: str, *, progress: bool = False, **hyperparams):
    """Params of the classifier with these hyperparameters: read from
    `<cache_dir>/digits_classifier_<hash>.npz` if present, else trained and saved
    (`progress`: say so, show a bar over the training and the path written)."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"digits_classifier_{hyperparams_key(**hyperparams)}.npz")
    if os.path.exists(path):
        return _load(path)
    progress_lib.say(progress, "training the digits classifier of the sample metrics (once; it is kept) ...")
    params, _ = train_digits_classifier(progress=progress_lib.shown(progress), **hyperparams)
    _save_atomic(path, params)
    progress_lib.wrote(path, progress)
    return params


def features_and_predictions(params, x_int, batch_size: int = 1000, net: DigitsClassifier | None = None):
    """(features_NF, predicted labels_N) as numpy arrays for images of integer
    levels 0..16, shape (N, 8, 8, 1). Batches are padded to `batch_size` so any
    N reuses one compiled program."""
    net = net or make_net()
    x = np.asarray(x_int)
    if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
        raise ValueError(f"images have shape {x.shape}; expected (N, 8, 8, 1)")
    apply = jax.jit(net.apply)
    feats, preds = [], []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + x.shape[1:], x.dtype)])
        logits, f = apply(params, classifier_input(padded))
        feats.append(np.asarray(f)[: len(chunk)])
        preds.append(np.argmax(np.asarray(logits), -1)[: len(chunk)])
    return np.concatenate(feats), np.concatenate(preds)


def frechet_distance_to(params, x_int_a, x_int_b, net: DigitsClassifier | None = None) -> float:
    """Fréchet distance between the classifier features of two image sets
    (Heusel et al. 2017, eq. 6). Biased upwards at small sizes: compare scores
    computed with the same set sizes."""
    feat_a, _ = features_and_predictions(params, x_int_a, net=net)
    feat_b, _ = features_and_predictions(params, x_int_b, net=net)
    return float(jax.jit(metrics_lib.frechet_distance)(feat_a, feat_b))


def uniform_noise_images(seed: int, num: int):
    """Images of i.i.d. uniform levels 0..16: a reference point far from the data."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, DIGITS_LEVELS, size=(num, 8, 8, 1)).astype(np.uint8)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache_dir", default=None, help="also save the trained params here, as load_or_train would")
    parser.add_argument("--num_steps", type=int, default=DEFAULTS["num_steps"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    args = parser.parse_args(argv)
    hp = dict(num_steps=args.num_steps, seed=args.seed)
    params, result = train_digits_classifier(**hp)
    if args.cache_dir:
        os.makedirs(args.cache_dir, exist_ok=True)
        _save_atomic(os.path.join(args.cache_dir, f"digits_classifier_{hyperparams_key(**hp)}.npz"), params)
    x_train, _ = load_digits("train")
    x_val, _ = load_digits("val")
    x_test, _ = load_digits("test")
    start = time.perf_counter()
    result["fd_test_train"] = frechet_distance_to(params, x_test, x_train)
    result["fd_val_train"] = frechet_distance_to(params, x_val, x_train)
    subset = np.random.default_rng(0).choice(len(x_train), len(x_test), replace=False)
    result["fd_train_subset_train"] = frechet_distance_to(params, x_train[subset], x_train)
    result["fd_noise_train"] = frechet_distance_to(params, uniform_noise_images(0, len(x_test)), x_train)
    result["fd_seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
