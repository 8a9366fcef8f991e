"""Latent diffusion (Rombach et al. 2022): a diffusion model on the latents of a
fixed, pre-trained KL-regularized autoencoder, as a `genjax.core.Model`.

First stage (trained before, then frozen): a Gaussian VAE (`genjax.vae.model`)
with q(z|x) = N(mu(x), diag(sigma(x)^2)) and a categorical decoder p(x|z) on
discrete images x (Rombach et al. 2022, sec. 3.1: "KL-reg."). Second stage: any
diffusion model (`genjax.diffusion.model.make_diffusion_model`) on the rescaled
latents u = z / s, where s is one scalar that brings the latents to unit scale
(Rombach et al. 2022, sec. 4.3.2 and App. G, the "scale factor" of the KL
autoencoder): its batches are latents, so its loss is the diffusion loss of
the existing family (Rombach et al. 2022, eq. 2 with epsilon_theta(z_t, t)).

Sampling draws u with the diffusion sampler, z = s u, and decodes x ~ p(x|z) or
its most probable level per pixel.

Likelihood: a lower bound on the log-probability of the *discrete* image x,
the ELBO of the VAE with the diffusion density as its prior (Kingma & Welling
2014, eq. 3, its KL term split into cross-entropy and entropy, as in the latent
score models of Vahdat et al. 2021):

    log P(x) >= E_q[log p(x|z)] + E_q[log p_diff(z)] + H[q(z|x)]

with p_diff(z) = p_theta(z / s) / s^L the density of the probability-flow ODE
(Song et al. 2021, eq. 13 and App. D.2, eq. 39-40; `likelihood.log_likelihood`)
after the change of variables z = s u, and H[q] = sum_j log sigma_j + (L/2)
log(2 pi e), the entropy of a diagonal Gaussian in closed form. The two
expectations are estimated with z ~ q(z|x) (one draw per image by default):
unbiased for the bound. The ODE density is itself exact only up to the solver's
tolerance (and unbiased in its Hutchinson trace estimate), as for pixel-space
diffusion.
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp

from genjax.core import Model, check_int
from genjax.vae import model as vae_lib
from genjax.data import images as images_lib

DECODERS = ("mode", "sample")


def diagonal_gaussian_entropy(log_std_NL):
    """H[N(mu, diag(exp(log_std)^2))] in nats, summed over the last axis:
    sum_j log sigma_j + (L/2) log(2 pi e) (Cover & Thomas 2006, Theorem 8.4.1)."""
    dim = log_std_NL.shape[-1]
    return jnp.sum(log_std_NL, axis=-1) + 0.5 * dim * math.log(2.0 * math.pi * math.e)


def latent_elbo_terms(key, encode_fn: Callable, log_likelihood_fn: Callable, log_prior_fn: Callable, y,
                      num_samples: int = 1):
    """The three terms of log P(x) >= E_q[log p(x|z)] + E_q[log p(z)] + H[q(z|x)]
    (Kingma & Welling 2014, eq. 3, with -KL = E_q[log p(z)] + H[q]), per example.

    encode_fn(y) -> (mean_NL, log_std_NL) of q(z|x); log_likelihood_fn(z_NL) ->
    log p(x|z) (N,); log_prior_fn(key, z_NL) -> log p(z) (N,). The expectations
    are the mean over `num_samples` reparameterized draws z ~ q(z|x) (Kingma &
    Welling 2014, eq. 10); the entropy is exact. Returns a dict of (N,) arrays:
    "reconstruction" (E_q log p(x|z)), "prior" (E_q log p(z)), "entropy" and
    "bound" (their sum)."""
    num_samples = check_int("num_samples", num_samples, 1)
    mean, log_std = encode_fn(y)

    def one(k):
        z_key, prior_key = jax.random.split(k)
        z = mean + jnp.exp(log_std) * jax.random.normal(z_key, mean.shape, mean.dtype)
        return log_likelihood_fn(z), log_prior_fn(prior_key, z)

    log_lik, log_prior = jax.lax.map(one, jax.random.split(key, num_samples))
    terms = {"reconstruction": jnp.mean(log_lik, axis=0), "prior": jnp.mean(log_prior, axis=0),
             "entropy": diagonal_gaussian_entropy(log_std)}
    terms["bound"] = terms["reconstruction"] + terms["prior"] + terms["entropy"]
    return terms


def make_bound_terms_fn(prior: Model, vae: vae_lib.VAE, vae_params, *, scale: float,
                        num_latent_samples: int = 1) -> Callable:
    """bound_terms(params, key, y, num_latent_samples=None, **kwargs) ->
    `latent_elbo_terms` (per image, nats) of the discrete images of model-space y
    under latent diffusion with the diffusion model `prior` on u = z / scale:
    log p_diff(z) = prior.log_prob(u) - L log(scale) (change of variables), kwargs
    going to prior.log_prob (the unconditional density of a conditional prior)."""
    scale = _check_scale(scale)
    default_k = check_int("num_latent_samples", num_latent_samples, 1)
    log_scale_total = vae.latent_dim * math.log(scale)

    def bound_terms(params, key, y, num_latent_samples=None, **kwargs):
        k = default_k if num_latent_samples is None else num_latent_samples

        def log_prior_fn(prior_key, z):
            return prior.log_prob(params, prior_key, z / scale, **kwargs) - log_scale_total

        return latent_elbo_terms(key, lambda y: vae_lib.encode(vae, vae_params, y),
                                 vae_lib.log_likelihood_fn(vae, vae_params, y), log_prior_fn, y,
                                 num_samples=k)

    return bound_terms


def _check_scale(scale) -> float:
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale={scale!r}; expected a finite number > 0")
    return scale


def make_latent_diffusion_model(prior: Model, vae: vae_lib.VAE, vae_params, *, scale: float,
                                num_latent_samples: int = 1) -> Model:
    """Latent diffusion (module docstring) from a diffusion model `prior` on latents
    u = z / scale of shape (vae.latent_dim,) and a trained VAE (`vae`, its frozen
    `vae_params`, closed over as constants).

    init, loss: the prior's, on batches of rescaled latents (arrays (N, L), or
    {"x": latents, "label": labels} for a class-conditional prior).
    sample(params, key, num, decode="mode" | "sample", **kwargs): the prior's
    sample(params, key, num, **kwargs) (sampler, labels, guidance), then the
    images (num, *vae.data_shape) in model space: the cell centres of the most
    probable level of p(x|z) per pixel ("mode") or of a draw x ~ p(x|z) ("sample").
    log_prob(params, key, y, num_latent_samples=None, **kwargs): the bound on
    log P(x) for the discrete images x of model-space y (N, *data_shape), minus
    D log(2/L) (the log-volume of one cell, as `genjax.vae.model` returns it), so
    the glue's discrete NLL of dequantized images is the bound's -log P(x) in nats
    per image (`make_bound_terms_fn` gives its three terms).
    """
    scale = _check_scale(scale)
    volume = images_lib.log_cell_volume(tuple(vae.data_shape), vae.num_levels)
    bound_terms = make_bound_terms_fn(prior, vae, vae_params, scale=scale,
                                      num_latent_samples=num_latent_samples)

    def sample(params, key, num, decode="mode", **kwargs):
        if decode not in DECODERS:
            raise ValueError(f"unknown decode {decode!r}; expected one of {DECODERS}")
        prior_key, x_key = jax.random.split(key)
        u = prior.sample(params, prior_key, num, **kwargs)
        return vae_lib.decode(vae, vae_params, u * scale, key=x_key if decode == "sample" else None)

    def log_prob(params, key, y, num_latent_samples=None, **kwargs):
        return bound_terms(params, key, y, num_latent_samples, **kwargs)["bound"] - volume

    return prior._replace(sample=sample, log_prob=log_prob)
