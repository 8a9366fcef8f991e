"""Latent diffusion glue (Rombach et al. 2022; docs/latent_diffusion.md): the
latent data source and the builder of the "latent_diffusion" family.

`LatentSource(config)` reads the trained autoencoder run in
config.model.autoencoder_workdir (its saved config through
`experiments.run_config`, its EMA weights through the run's checkpoints), encodes
the digits train split into q(z|x) = N(mu, sigma^2) once, and serves batches of
rescaled latents u = z / s, z ~ q(z|x) drawn afresh every step (model.latents =
"sample"; "mean": z = mu), with the image labels, to the existing diffusion
model. Everything a digits source does with images (held-out NLL, sample plots,
Fréchet distance and class accuracy) it leaves to the image source it wraps: the
model's samples are decoded images and its log_prob is a bound on log P(x) of
images (`genjax.diffusion.latent`).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import progress as progress_lib, run_config
from experiments.configuration import ConfigError
from genjax.data import images as images_lib
from genjax.diffusion import latent as latent_lib
from genjax.vae import model as vae_lib

AUTOENCODER_FAMILY = "vae"
AUTOENCODER_CONFIG = "configs/digits_kl_autoencoder.py"
LATENT_CHOICES = ("sample", "mean")
ENCODE_BATCH = 500


def _expected(config, here: bool = False) -> str:
    """What model.autoencoder_workdir must hold, and how to make it (`here`: train it
    at that path, which holds no run yet; else in a new workdir)."""
    m = config.model
    target = m.autoencoder_workdir if here else "DIR"
    how = f"--workdir={target}" + ("" if here else " and set model.autoencoder_workdir=DIR")
    return (f"expected the workdir of a finished {AUTOENCODER_FAMILY!r} run (the KL autoencoder) with "
            f"model.latent_dim={m.latent_dim} on data {config.data.name!r}; train one with python -m "
            f"experiments.main --config={AUTOENCODER_CONFIG} {how}")


def autoencoder_config(config):
    """The saved config of the autoencoder run that config.model.autoencoder_workdir
    names, checked: the directory exists, holds a run of the VAE family with
    model.latent_dim = config.model.latent_dim on the same data, trained to its
    train.num_steps. ConfigError naming the path and what was expected otherwise."""
    workdir = config.model.autoencoder_workdir
    what = f"model.autoencoder_workdir={workdir!r}"
    if not workdir:
        raise ConfigError(f"{what} is empty; {_expected(config)}")
    if not os.path.isdir(workdir):
        raise ConfigError(f"{what} does not exist; {_expected(config, here=True)}")
    saved = run_config.saved_config(workdir)
    if saved is None:
        raise ConfigError(f"{what} holds no run (no {run_config.CONFIG_FILE}); {_expected(config, here=True)}")
    family = saved.get("family")
    if family != AUTOENCODER_FAMILY:
        raise ConfigError(f"{what} holds a {family!r} run; {_expected(config)}")
    have = saved.get("model", {}).get("latent_dim")
    if have != config.model.latent_dim:
        raise ConfigError(f"{what} holds an autoencoder with model.latent_dim={have}, but this config's "
                          f"model.latent_dim={config.model.latent_dim}; set model.latent_dim={have} to use it, "
                          f"otherwise {_expected(config)}")
    data = saved.get("data", {}).get("name")
    if data != config.data.name:
        raise ConfigError(f"{what} holds an autoencoder of data {data!r}, but this config's data.name="
                          f"{config.data.name!r}; {_expected(config)}")
    steps = run_config.checkpoint_steps(workdir)
    budget = saved.get("train", {}).get("num_steps")
    if not steps or (budget is not None and max(steps) < budget):
        at = f"its newest checkpoint is at step {max(steps)}" if steps else "it has no checkpoint"
        raise ConfigError(f"{what} holds no finished run: {at} of train.num_steps={budget}; finish it "
                          f"(run its training command again to resume); otherwise {_expected(config)}")
    return run_config.load_run(workdir)


class Autoencoder:
    """A trained VAE run: its config, networks (`genjax.vae.model.VAE`) and EMA weights."""

    def __init__(self, config):
        from experiments import registry
        from experiments.experiment import Experiment

        self.workdir = config.model.autoencoder_workdir
        self.config = autoencoder_config(config)
        exp = Experiment(self.config)
        self.vae = registry.build_vae(self.config, exp.source)
        self.params = exp.restore(self.workdir).ema_params

    def encode(self, x_int):
        """(mean, log_std) of q(z|x) for integer images, numpy (N, L) each."""
        encode = jax.jit(lambda y: vae_lib.encode(self.vae, self.params, y))
        centres = images_lib.to_model_space(jax.random.PRNGKey(0), x_int, self.vae.num_levels)[0]
        centres = vae_lib.encoder_input(self.vae, centres)
        parts = [encode(centres[i:i + ENCODE_BATCH]) for i in range(0, len(centres), ENCODE_BATCH)]
        return (np.concatenate([np.asarray(p[0]) for p in parts]),
                np.concatenate([np.asarray(p[1]) for p in parts]))

    def reconstruct(self, x_int):
        """Model-space images decoded (most probable level) from the mean of q(z|x)."""
        mean, _ = self.encode(x_int)
        decode = jax.jit(lambda z: vae_lib.decode(self.vae, self.params, z))
        return np.concatenate([np.asarray(decode(mean[i:i + ENCODE_BATCH]))
                               for i in range(0, len(mean), ENCODE_BATCH)])


def latent_scale(mean_NL, log_std_NL) -> float:
    """s = sqrt(E[z^2]) over the training latents z ~ q(z|x) and their dimensions:
    the one scalar that brings the latents to unit scale (Rombach et al. 2022,
    sec. 4.3.2, the KL autoencoder's "scale factor")."""
    return float(np.sqrt(np.mean(mean_NL.astype(np.float64) ** 2 + np.exp(2.0 * log_std_NL.astype(np.float64)))))


class LatentSource:
    """Rescaled latents of the digits train split for training; the digits image
    source (`images`) for everything else (attributes not defined here are its)."""

    def __init__(self, config):
        from experiments import sources

        m = config.model
        if m.latents not in LATENT_CHOICES:
            raise ConfigError(f"model.latents={m.latents!r}; expected one of {LATENT_CHOICES} (a draw "
                              f"z ~ q(z|x) afresh every step, or its mean)")
        self.config = config
        self.autoencoder = Autoencoder(config)
        self.images = sources.build_source(config)
        if getattr(self.images, "num_levels", None) != self.autoencoder.vae.num_levels:
            raise ConfigError(f"data {config.data.name!r} has {getattr(self.images, 'num_levels', None)} "
                              f"levels; the autoencoder in {m.autoencoder_workdir} decodes "
                              f"{self.autoencoder.vae.num_levels}")
        self.num_classes = self.images.num_classes
        self.data_shape = (self.autoencoder.vae.latent_dim,)
        self.train_mean, self.train_log_std = self.autoencoder.encode(self.images.train_images)
        self.scale = latent_scale(self.train_mean, self.train_log_std)
        self.sample_latents = m.latents == "sample"

    def __getattr__(self, name):
        if name == "images":  # not set yet (during __init__)
            raise AttributeError(name)
        return getattr(self.images, name)

    def _batch(self, key, mean, log_std, labels):
        z = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape) if self.sample_latents else mean
        u = z / self.scale
        return u if self.num_classes is None else {"x": u, "label": labels}

    def batch_fn(self, batch_size):
        arrays = {"mean": jnp.asarray(self.train_mean), "log_std": jnp.asarray(self.train_log_std),
                  "label": jnp.asarray(self.images.train_labels)}
        index_batch = images_lib.array_batch_fn(arrays, batch_size)

        def batch_fn(data_key, step):
            b = index_batch(data_key, step)
            noise_key = jax.random.fold_in(jax.random.fold_in(data_key, step), 1)
            return self._batch(noise_key, b["mean"], b["log_std"], b["label"])

        return batch_fn

    def example_batch(self, batch_size):
        n = min(batch_size, len(self.train_mean))
        return self._batch(jax.random.PRNGKey(0), jnp.asarray(self.train_mean[:n]),
                           jnp.asarray(self.train_log_std[:n]), jnp.asarray(self.images.train_labels[:n]))


def build_latent_diffusion_model(config, source):
    """Latent diffusion (Rombach et al. 2022): the diffusion model of
    model.diffusion (score_sde | ddpm, with its SDE and net) trained on the latents of
    the KL autoencoder in model.autoencoder_workdir; samples are decoded images,
    log_prob a bound on log P(x) through the probability-flow ODE."""
    from experiments import registry

    m = config.model
    if not isinstance(source, LatentSource):
        raise ConfigError(f"family 'latent_diffusion' reads its latents from model.autoencoder_workdir; "
                          f"got a {type(source).__name__}")
    if registry.net_is_convolutional(config):
        raise ConfigError(f"model.net={m.net!r} is convolutional, but the latents are vectors "
                          f"{source.data_shape}; use model.net='mlp'")
    objective = registry.choose("model.diffusion", m.diffusion, registry.DIFFUSION_OBJECTIVES)
    prior = registry.build_diffusion_model(config, source, objective=objective)
    ae = source.autoencoder
    return latent_lib.make_latent_diffusion_model(prior, ae.vae, ae.params, scale=source.scale,
                                                  num_latent_samples=config.eval.num_latent_samples)


def latent_diffusion_evaluations(config, source, model, params, model_kwargs, progress, reported):
    """The autoencoder's floor and the bound's terms on the eval split:
    "autoencoder_floor": Fréchet distance and class accuracy of the reconstructions
    of the test split (the mean of q(z|x), decoded to the most probable level): the
    best the latent model can reach through this decoder; "bound_terms": the means
    of E_q log p(x|z), E_q log p_diff(z), H[q(z|x)] (nats per image; their sum is
    -nll_nats) on eval.split."""
    from experiments import registry

    del model, reported
    ec = config.eval
    test_int, test_labels = source.load_split("test")
    recon = source.autoencoder.reconstruct(test_int)
    quality = source.images.sample_quality(recon, test_labels, progress=progress)
    floor = {k: quality[k] for k in ("frechet_distance", "class_accuracy", "class_entropy_nats") if k in quality}
    floor["num_images"] = int(len(test_int))
    x_int, _ = source.load_split(ec.split)
    x_int = x_int[: ec.num or None]
    y, _ = images_lib.to_model_space(jax.random.PRNGKey(5), x_int, source.num_levels)
    prior = registry.build_diffusion_model(
        config, source, objective=registry.DIFFUSION_OBJECTIVES[config.model.diffusion])
    ae = source.autoencoder
    terms_fn = latent_lib.make_bound_terms_fn(prior, ae.vae, ae.params, scale=source.scale)
    kwargs = {**(registry.log_prob_kwargs(config) or {}), **model_kwargs}
    names = ("reconstruction", "prior", "entropy", "bound")
    terms_jit = jax.jit(lambda p, k, y: jnp.stack([terms_fn(p, k, y, **kwargs)[n] for n in names], axis=-1))
    # the keys and batches of the NLL (ImageSource.discrete_nll), so bound_nats = -nll_nats
    terms = progress_lib.map_batches(lambda k, chunk: terms_jit(params, k, chunk), y, ec.get("batch_size", 64),
                                     jax.random.PRNGKey(1), desc=f"{ec.split} bound terms ({len(y)} images)",
                                     progress=progress)
    means = {name: float(np.mean(terms[:, i])) for i, name in enumerate(names)}
    return {
        "autoencoder_floor": floor,
        "bound_terms": {**{f"{k}_nats": v for k, v in means.items()}, "split": ec.split, "num_eval": int(len(y))},
        "latent_scale": source.scale,
        "likelihood_note": "nll_nats is an upper bound on -log P(x), nats per image of the discrete data: "
                           "-(E_q log p(x|z) + E_q log p_diff(z) + H[q(z|x)]), log p_diff from the "
                           "probability-flow ODE on the latents"}
