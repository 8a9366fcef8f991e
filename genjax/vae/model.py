"""The Gaussian VAE as a `genjax.core.Model`, and its public encode / decode.

    p(z) = N(0, I_L),   p(x|z) = prod_d Categorical(x_d; softmax(decoder(z)_d)),
    q(z|x) = N(mean(x), diag(exp(log_std(x))^2))

on discrete images x in {0..L-1}^D (`genjax.vae.likelihood`). Parameters are
{"encoder": ..., "decoder": ...}.

Loss (per batch), the negative ELBO (Kingma & Welling 2014, eq. 3, with the KL
in closed form, eq. 10), generalised by a KL weight beta (beta-VAE, Higgins et
al. 2017, eq. 4) and free bits lambda (Kingma et al. 2016, App. C.8):

    loss = -E_batch E_q[log p(x|z)] + beta * sum_j max(lambda, E_batch KL_j)

beta = 1, lambda = 0 is the negative ELBO; a small beta (e.g. 1e-3) makes the
KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3).
The metrics always report the plain ELBO (beta = 1, lambda = 0), so runs with
different beta compare.

log_prob is a *lower bound*: one draw of the importance-weighted bound L_k
(Burda et al. 2016, eq. 8) on log P(x), with k = num_importance_samples, expressed
as a density of the dequantized model-space y (minus D log(2/L), see
`likelihood`), so the glue's discrete NLL is -L_k in nats per image.

Public functions for other code (latent diffusion): `encode(vae, params, y)` ->
(mean, log_std) of q(z|x) and `decode(vae, params, z, key=None)` -> images in
model space, with `VAE` the frozen description of the networks.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.core import Model, check_int, unconditional_batch
from genjax.vae import bounds, likelihood
from genjax.data import images as images_lib


@dataclasses.dataclass(frozen=True)
class VAE:
    """The static description of a Gaussian VAE: its networks and data.

    encoder.apply({"params": p}, x_NHWC, train=False) -> (mean_NL, log_std_NL);
    decoder.apply({"params": p}, z_NL, train=False) -> logits (N, *data_shape, num_levels).
    With train=True (the loss only) they may use the rng collection "dropout";
    encode, decode and log_prob are deterministic networks.
    """

    encoder: nn.Module
    decoder: nn.Module
    data_shape: tuple
    num_levels: int
    latent_dim: int


def encoder_input(vae: VAE, y):
    """The cell centres of the discrete image that model-space y (dequantized or not)
    falls in: what the encoder sees, so the model is a function of x alone."""
    return images_lib.level_centres(likelihood.levels_of(y, vae.num_levels), vae.num_levels)


def encode(vae: VAE, params, y):
    """(mean, log_std), each (N, latent_dim), of q(z|x) for model-space images y
    (N, *data_shape) in [-1, 1]; x = the levels of y. params: the VAE's
    {"encoder", "decoder"} parameters."""
    return vae.encoder.apply({"params": params["encoder"]}, encoder_input(vae, y))


def decoder_logits(vae: VAE, params, z):
    """Logits (N, *data_shape, num_levels) of p(x|z) for latents z (N, latent_dim)."""
    return vae.decoder.apply({"params": params["decoder"]}, z)


def decode(vae: VAE, params, z, key=None):
    """Model-space images (N, *data_shape) for latents z (N, latent_dim): the cell
    centres of the most probable level of each pixel (key None) or of a draw
    x ~ p(x|z) (given a key)."""
    logits = decoder_logits(vae, params, z)
    levels = (likelihood.most_probable_levels(logits) if key is None
              else likelihood.sample_levels(key, logits))
    return images_lib.level_centres(levels, vae.num_levels)


def log_likelihood_fn(vae: VAE, params, y):
    """z_NL -> log P(x|z) (N,) for the discrete images x of y."""
    levels = likelihood.levels_of(y, vae.num_levels)
    return lambda z, _y=None: likelihood.categorical_log_likelihood(decoder_logits(vae, params, z), levels)


def _non_negative(name, value) -> float:
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name}={value!r}; expected a finite number >= 0")
    return v


def make_vae_model(vae: VAE, *, kl_weight: float = 1.0, free_bits: float = 0.0,
                   num_importance_samples: int = 1000, importance_chunk_size: int = 100) -> Model:
    """The VAE (module docstring) as a Model.

    kl_weight: beta (>= 0; 1 is the ELBO). free_bits: lambda, nats per latent
    dimension (>= 0; 0 is off). num_importance_samples: k of log_prob's bound;
    importance_chunk_size: samples per decoder pass (memory).

    Batches are model-space image arrays (N, *data_shape) (unconditional).
    sample(params, key, num, method="ancestral" | "mode"): z ~ N(0, I), then
    x ~ p(x|z) ("ancestral") or its most probable levels ("mode"), as cell centres.
    log_prob(params, key, y, num_importance_samples=k, importance_chunk_size=c):
    one draw of the bound L_k on log P(x) minus D log(2/L) (a lower bound).
    """
    data_shape = tuple(vae.data_shape)
    kl_weight = _non_negative("kl_weight", kl_weight)
    free_bits = _non_negative("free_bits", free_bits)
    default_k = check_int("num_importance_samples", num_importance_samples, 1)
    default_chunk = check_int("importance_chunk_size", importance_chunk_size, 1)
    check_int("latent_dim", vae.latent_dim, 1)
    check_int("num_levels", vae.num_levels, 2)
    volume = images_lib.log_cell_volume(data_shape, vae.num_levels)

    def images_of(batch):
        return unconditional_batch("VAE", batch, data_shape)

    def init(key, batch):
        y = images_of(batch)
        e_key, d_key = jax.random.split(key)
        encoder_params = vae.encoder.init(e_key, encoder_input(vae, y))["params"]
        decoder_params = vae.decoder.init(d_key, jnp.zeros((y.shape[0], vae.latent_dim)))["params"]
        return {"encoder": encoder_params, "decoder": decoder_params}

    def loss(params, key, batch):
        y = images_of(batch)
        z_key, encoder_dropout, decoder_dropout = jax.random.split(key, 3)
        mean, log_std = vae.encoder.apply({"params": params["encoder"]}, encoder_input(vae, y), train=True,
                                          rngs={"dropout": encoder_dropout})
        z = bounds.reparameterize(z_key, mean, log_std)
        logits = vae.decoder.apply({"params": params["decoder"]}, z, train=True, rngs={"dropout": decoder_dropout})
        log_lik_N = likelihood.categorical_log_likelihood(logits, likelihood.levels_of(y, vae.num_levels))
        kl_NL = bounds.kl_to_standard_normal(mean, log_std)
        kl_term = bounds.free_bits_kl(kl_NL, free_bits)
        value = -jnp.mean(log_lik_N) + kl_weight * kl_term
        kl_N = jnp.sum(kl_NL, axis=1)
        metrics = {"elbo": jnp.mean(log_lik_N - kl_N), "reconstruction_nll": -jnp.mean(log_lik_N),
                   "kl": jnp.mean(kl_N),
                   "active_units": jnp.sum(jnp.mean(kl_NL, axis=0) > 0.01).astype(jnp.float32)}
        return value, metrics

    def sample(params, key, num, method="ancestral"):
        if method not in ("ancestral", "mode"):
            raise ValueError(f"unknown VAE sampler {method!r}; expected 'ancestral' or 'mode'")
        num = check_int("num", num, 1)
        z_key, x_key = jax.random.split(key)
        z = jax.random.normal(z_key, (num, vae.latent_dim))
        return decode(vae, params, z, key=x_key if method == "ancestral" else None)

    def log_prob(params, key, batch, num_importance_samples=None, importance_chunk_size=None):
        y = images_of(batch)
        k = default_k if num_importance_samples is None else num_importance_samples
        chunk = default_chunk if importance_chunk_size is None else importance_chunk_size
        bound = bounds.importance_weighted_bound(
            key, lambda _: encode(vae, params, y), log_likelihood_fn(vae, params, y), y,
            num_samples=k, chunk_size=chunk)
        return bound - volume

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
