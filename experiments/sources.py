"""Training data, held-out evaluation and sample plots for each kind of dataset.

A source gives the trainer `batch_fn(data_key, step)` and the evaluator the
numbers that fit its data: toy 2D densities have exact samples (and often exact
entropies) and a density heatmap; images are discrete (17-level digits), so their
NLL is the dequantized bound on the discrete data (Theis et al. 2016) and their
samples are judged by a classifier's Fréchet distance and class accuracy.
"""
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import datasets, plots, progress as progress_lib
from experiments.configuration import ConfigError
from genjax import metrics as metrics_lib
from genjax.data import images as images_lib
from genjax.data import toy2d
from genjax.diffusion.likelihood import discrete_nll

TOY_DENSITIES = {
    "checkerboard": toy2d.checkerboard,
    "eight_gaussians": toy2d.eight_gaussians,
    "rings": toy2d.rings,
    "pinwheel": toy2d.pinwheel,
    "two_moons": toy2d.two_moons,
    "swiss_roll": toy2d.swiss_roll,
    "grid25": toy2d.grid25,
    "ring8": toy2d.ring8,
}
# densities that are mixtures of separated isotropic Gaussians: samples are also
# judged by mode coverage (genjax.metrics.mode_coverage, the mode-collapse benchmarks)
MODE_MIXTURES = {
    "grid25": toy2d.grid25_mixture,
    "ring8": toy2d.ring8_mixture,
}
_HELD_OUT_STREAM = 7  # key stream for held-out toy data, disjoint from training
# eval.batch_size of runs whose saved config predates the key (points / images per
# log_prob call; each call advances the progress bar once)
TOY_EVAL_BATCH_SIZE = 512
IMAGE_EVAL_BATCH_SIZE = 64


class ToySource:
    """Fresh exact samples of a 2D density every step."""

    num_classes = None
    data_shape = (2,)

    def __init__(self, config):
        self.config = config
        self.density = TOY_DENSITIES[config.data.name]()
        self.key = jax.random.PRNGKey(config.seed)

    def batch_fn(self, batch_size):
        density = self.density

        def batch_fn(data_key, step):
            return density.sample(jax.random.fold_in(data_key, step), batch_size)

        return batch_fn

    def example_batch(self, batch_size):
        return self.density.sample(jax.random.PRNGKey(0), batch_size)

    def held_out(self, num):
        return self.density.sample(jax.random.fold_in(self.key, _HELD_OUT_STREAM), num)

    def plot_samples(self, path, samples, title):
        return plots.scatter_samples(path, samples, self.held_out(len(samples)), title=title)

    def mode_metrics(self, samples) -> dict:
        """Modes captured, fraction of high-quality samples and reverse KL of the mode
        histogram (`genjax.metrics.mode_coverage`) on a mixture in MODE_MIXTURES, else {}."""
        if self.config.data.name not in MODE_MIXTURES:
            return {}
        mixture = MODE_MIXTURES[self.config.data.name]()
        std = float(np.sqrt(mixture.covs_KDD[0, 0, 0]))
        found = metrics_lib.mode_coverage(jnp.asarray(samples), mixture.means_KD, std)
        return {"modes": int(found["modes"]), "num_modes": int(mixture.means_KD.shape[0]),
                "high_quality_fraction": float(found["high_quality_fraction"]),
                "reverse_kl": float(found["reverse_kl"])}

    def density_method(self, log_prob_kwargs) -> str:
        """How `model.log_prob` with these keywords computes the log-density, for a title."""
        if "rtol" in log_prob_kwargs:
            ode = "probability-flow ODE" if "sde" in self.config.model else "flow ODE"
            trace = {True: "exact divergence, ", False: "Hutchinson trace estimate, "}.get(
                log_prob_kwargs.get("exact_divergence"), "")
            return f"{ode}, {trace}tol {log_prob_kwargs['rtol']:g}"
        if "resolution" in log_prob_kwargs:
            return f"exp(-E)/Z, Z by quadrature on a {log_prob_kwargs['resolution']}-point grid"
        return "exact change of variables"

    def evaluate(self, model, params, workdir, samples=None, heatmap=True, log_prob_kwargs=None, step=None,
                 progress: bool = True):
        """NLL on held-out samples (`model.log_prob` with `log_prob_kwargs`; skipped when
        those are None: the family has no likelihood), sliced Wasserstein distance of
        the samples against exact data, and a learned-density heatmap whose title says
        how the density was computed and, given `step`, the training step of `params`.

        The NLL and the heatmap call log_prob on eval.batch_size points at a time
        (`progress.map_batches`: the batch index folded into the key); `progress`
        shows a bar per loop and the path of the figure written."""
        ec = self.config.eval
        batch_size = ec.get("batch_size", TOY_EVAL_BATCH_SIZE)
        result = {}
        if self.density.entropy is not None:
            result["data_entropy_nats"] = float(self.density.entropy)
        if samples is not None:
            ref = self.held_out(len(samples))
            result["sliced_wasserstein"] = float(
                metrics_lib.sliced_wasserstein(jax.random.PRNGKey(2), jnp.asarray(samples), ref))
            result.update(self.mode_metrics(samples))
        if log_prob_kwargs is None:
            return result
        ll_kwargs = log_prob_kwargs
        x = self.held_out(ec.num)
        log_prob = jax.jit(lambda p, k, x: model.log_prob(p, k, x, **ll_kwargs))
        t0 = time.perf_counter()
        logp = progress_lib.map_batches(lambda k, chunk: log_prob(params, k, chunk), x, batch_size,
                                        jax.random.PRNGKey(1), desc=f"held-out NLL ({int(ec.num)} points)",
                                        progress=progress)
        result.update({
            "nll_nats": float(-logp.mean()),
            "nll_stderr": float(logp.std() / math.sqrt(len(logp))),
            "eval_seconds": time.perf_counter() - t0,
            "num_eval": int(ec.num),
        })
        if heatmap:
            # looser ODE tolerances where the model has a solver
            heat_kwargs = {k: ec.heatmap_tol if k in ("rtol", "atol") else v
                           for k, v in ll_kwargs.items()}
            log_prob_heat = jax.jit(lambda p, k, x: model.log_prob(p, k, x, **heat_kwargs))
            lim = 4.5
            grid = np.linspace(-lim, lim, ec.grid_size, dtype=np.float32)
            xx, yy = np.meshgrid(grid, grid)
            points = np.stack([xx.ravel(), yy.ravel()], 1)
            logp_grid = progress_lib.map_batches(
                lambda k, chunk: log_prob_heat(params, k, chunk), points, batch_size, jax.random.PRNGKey(3),
                desc=f"density heatmap ({ec.grid_size}x{ec.grid_size} points)", progress=progress)
            when = "" if step is None else f", training step {int(step)}"
            path = os.path.join(workdir, "density.png")
            plots.density_heatmap(path, logp_grid.reshape(ec.grid_size, ec.grid_size), lim,
                                  title=f"model density ({self.density_method(heat_kwargs)}){when}\n"
                                        f"held-out NLL {result['nll_nats']:.3f} nats")
            progress_lib.wrote(path, progress)
        return result


class ImageSource:
    """Integer images with `num_levels` grey levels, dequantized afresh every step
    into [-1, 1]: sklearn's 8x8 digits (17 levels) or a prepared TFDS dataset (256).

    `load_split(split) -> (images_NHWC uint8, labels_N)`. Batches are dicts
    {"x", "label"} for class-conditional models and plain image arrays otherwise.
    The epoch order is a function of (seed, step). Sample quality (classifier FD
    and class accuracy) needs the in-project digits classifier, so digits only.
    """

    def __init__(self, config, load_split, num_levels: int, num_classes: int, has_classifier: bool):
        self.config = config
        self.load_split = load_split
        self.num_levels = num_levels
        self.train_images, self.train_labels = load_split("train")
        # configs written for other data (a toy density's) have no model.conditional
        self.num_classes = num_classes if config.model.get("conditional", False) else None
        self.has_classifier = has_classifier
        self.data_shape = tuple(self.train_images.shape[1:])

    def _batch(self, key, x_int, labels):
        x, _ = images_lib.to_model_space(key, x_int, self.num_levels)
        return x if self.num_classes is None else {"x": x, "label": labels}

    def batch_fn(self, batch_size):
        arrays = {"x": jnp.asarray(self.train_images), "label": jnp.asarray(self.train_labels)}
        index_batch = images_lib.array_batch_fn(arrays, batch_size)

        def batch_fn(data_key, step):
            b = index_batch(data_key, step)
            dequant_key = jax.random.fold_in(jax.random.fold_in(data_key, step), 1)
            return self._batch(dequant_key, b["x"], b["label"])

        return batch_fn

    def example_batch(self, batch_size):
        n = min(batch_size, len(self.train_images))
        return self._batch(jax.random.PRNGKey(0), self.train_images[:n], self.train_labels[:n])

    def label_layout(self, num, sorted_by_label=False) -> str | None:
        """Where the classes are in a grid of `num` samples (10 per row) of a
        class-conditional model, drawn for labels 0, 1, ..., k-1, 0, ...; None when
        the model is unconditional."""
        k = self.num_classes
        if k is None:
            return None
        if sorted_by_label:
            if k == 10 and num == 100:
                return "rows: classes 0-9 (the label each sample was drawn for)"
            return f"sorted by the label each sample was drawn for (0-{k - 1}), 10 per row"
        if k == 10:
            return "columns: classes 0-9 (sample i drawn for label i mod 10)"
        return f"sample i (row by row, 10 per row) drawn for label i mod {k}"

    def plot_samples(self, path, samples, title, *, sorted_by_label=False):
        """A grid of the first 100 samples, 10 per row; for a class-conditional model
        the title also says where the classes are (`label_layout`): columns for
        samples in drawing order, rows for samples the caller sorted by label."""
        levels = np.asarray(images_lib.to_levels(jnp.asarray(samples[:100]), self.num_levels))
        grid = np.asarray(images_lib.image_grid(levels, nrow=10, pad_value=self.num_levels - 1))
        layout = self.label_layout(len(levels), sorted_by_label)
        title = title if layout is None else f"{title}\n{layout}" if title else layout
        return plots.image_grid(path, grid, vmax=self.num_levels - 1, title=title)

    def discrete_nll(self, model, params, split, num=None, *, batch_size=IMAGE_EVAL_BATCH_SIZE,
                     progress: bool = False, **ll_kwargs):
        """Per-image bound on -log P(x) of the discrete data, nats (dequantized ODE NLL),
        for the first `num` images of the split (all when None), `batch_size` images
        per log_prob call (batch b drawing from fold_in(PRNGKey(1), b)); `progress`
        shows a bar over the batches."""
        x_int, _ = self.load_split(split)
        x_int = x_int[:num]
        y, log_volume = images_lib.to_model_space(jax.random.PRNGKey(5), x_int, self.num_levels)
        log_prob = jax.jit(lambda p, k, y: model.log_prob(p, k, y, **ll_kwargs))
        logp = progress_lib.map_batches(lambda k, chunk: log_prob(params, k, chunk), y, batch_size,
                                        jax.random.PRNGKey(1), desc=f"{split} NLL ({len(y)} images)",
                                        progress=progress)
        return np.asarray(discrete_nll(jnp.asarray(logp), log_volume))

    def sample_quality(self, samples, labels=None, *, progress: bool = False):
        """Fréchet distance of the digits classifier's features to the test split, the
        classes the classifier gives the samples (fraction per class and the entropy
        of that histogram in nats, ln 10 = 2.303 when all are equally frequent: mode
        coverage) and, given the labels the samples were drawn for, the fraction
        classified as them. The classifier is trained once if not cached (with
        `progress`: said, with a bar and the path written)."""
        from experiments import classifier

        if not self.has_classifier:
            return {}
        clf = classifier.load_or_train(self.config.eval.classifier_dir, progress=progress)
        levels = np.asarray(images_lib.to_levels(jnp.asarray(samples), self.num_levels))
        test_int, _ = self.load_split("test")
        result = {"frechet_distance": float(classifier.frechet_distance_to(clf, levels, test_int))}
        _, predicted = classifier.features_and_predictions(clf, levels)
        coverage = metrics_lib.class_coverage(predicted, datasets.DIGITS_CLASSES)
        result["class_fractions"] = [round(float(f), 4) for f in coverage["class_fractions"]]
        result["class_entropy_nats"] = float(coverage["class_entropy"])
        if labels is not None:
            result["class_accuracy"] = float(np.mean(np.asarray(predicted) == np.asarray(labels)))
        return result

    def evaluate(self, model, params, workdir, samples=None, heatmap=True, log_prob_kwargs=None, step=None,
                 progress: bool = True):
        """NLL of the discrete images (nats per image, bits/dim) on config.eval.split,
        eval.batch_size images per log_prob call, with a bar when `progress`
        (skipped when `log_prob_kwargs` is None: the family has no likelihood); with
        samples (digits), the Fréchet distance of the digits classifier's features
        to the test set and, for a conditional model, the class accuracy of the
        samples, drawn for labels 0, 1, ..., 9, 0, ..."""
        del workdir, heatmap, step  # no figure here
        ec = self.config.eval
        result = {}
        if log_prob_kwargs is not None:
            t0 = time.perf_counter()
            nll = self.discrete_nll(model, params, ec.split, num=ec.num or None,
                                    batch_size=ec.get("batch_size", IMAGE_EVAL_BATCH_SIZE),
                                    progress=progress, **log_prob_kwargs)
            dim = math.prod(self.data_shape)
            result = {
                "split": ec.split,
                "nll_nats": float(nll.mean()),
                "nll_stderr": float(nll.std() / math.sqrt(len(nll))),
                "bits_per_dim": float(nll.mean() / (dim * math.log(2))),
                "eval_seconds": time.perf_counter() - t0,
                "num_eval": int(len(nll)),
            }
        if samples is not None:
            labels = None
            if self.num_classes is not None:
                labels = np.arange(len(samples)) % self.num_classes
            result.update(self.sample_quality(samples, labels, progress=progress))
        return result


def _digits_source(config):
    """The 8x8 digits; data.train_size = n > 0 trains on the first n images of the
    train split only (0 or absent: all 1000), e.g. to study memorization of a small
    training set. The other splits are unchanged."""
    train_size = config.data.get("train_size", 0)
    available = datasets.DIGITS_SPLITS["train"].stop
    if not isinstance(train_size, int) or isinstance(train_size, bool) or not 0 <= train_size <= available:
        raise ConfigError(f"data.train_size={train_size!r}; expected an integer from 1 to the {available} images "
                          f"of the digits train split (0: all of them)")
    def load_split(split):
        images, labels = datasets.load_digits(split)
        if train_size and split == "train":
            return images[:train_size], labels[:train_size]
        return images, labels

    return ImageSource(config, load_split, datasets.DIGITS_LEVELS,
                       datasets.DIGITS_CLASSES, has_classifier=True)


def _tfds_source(config):
    """data.name = "tfds:<name>" (e.g. tfds:mnist, tfds:cifar10), read from data.data_dir."""
    name = config.data.name.split(":", 1)[1]
    data_dir = config.data.get("data_dir") or None
    splits = {"train": config.data.get("train_split", "train"),
              "test": config.data.get("test_split", "test")}

    def load_split(split):
        return datasets.load_tfds_images(name, splits.get(split, split), data_dir=data_dir)

    return ImageSource(config, load_split, 256, config.data.get("num_classes", 10),
                       has_classifier=False)


def build_source(config):
    """The data source config.data.name names: a toy density, "digits" or "tfds:<name>"."""
    name = config.data.name
    if name in TOY_DENSITIES:
        return ToySource(config)
    if name == "digits":
        return _digits_source(config)
    if name.startswith("tfds:"):
        return _tfds_source(config)
    raise ConfigError(f"unknown dataset {name!r}; expected one of "
                     f"{sorted(TOY_DENSITIES) + ['digits']} or 'tfds:<name>'")
