"""Gaussian latent densities and the variational bounds on log p(x).

Prior p(z) = N(0, I_L); encoder q(z|x) = N(mean(x), diag(exp(log_std(x))^2)),
sampled by reparameterization z = mean + exp(log_std) * eps, eps ~ N(0, I)
(Kingma & Welling 2014, eq. 10).

ELBO (Kingma & Welling 2014, eq. 3 and, with the KL in closed form, eq. 10):

    log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))

Importance-weighted bound (Burda et al. 2016, eq. 8), k samples z_i ~ q(z|x):

    log p(x) >= L_k = E[ log (1/k) sum_i p(x, z_i) / q(z_i|x) ]

L_1 is the ELBO, L_k <= L_{k+1} <= log p(x) and L_k -> log p(x) as k -> inf
when p(x, z) / q(z|x) is bounded (Burda et al. 2016, Theorem 1). A single draw of
the k-sample estimate is a stochastic lower bound: its expectation is L_k.
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp

from genjax.core import check_int

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z, mean, log_std):
    """log N(z; mean, diag(exp(log_std)^2)), summed over the last axis."""
    standard = (z - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * standard**2 - log_std - 0.5 * LOG_2PI, axis=-1)


def standard_normal_log_density(z):
    """log N(z; 0, I), summed over the last axis."""
    return jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=-1)


def kl_to_standard_normal(mean, log_std):
    """KL(N(mean, diag(exp(log_std)^2)) || N(0, I)) per latent dimension (same shape
    as mean): (mean^2 + sigma^2 - 1) / 2 - log sigma (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean**2 + jnp.exp(2.0 * log_std) - 1.0) - log_std


def reparameterize(key, mean, log_std, num_samples: int | None = None):
    """z = mean + exp(log_std) eps (Kingma & Welling 2014, eq. 10): one draw with the
    shape of mean, or (num_samples, *mean.shape) draws."""
    shape = mean.shape if num_samples is None else (num_samples,) + mean.shape
    return mean + jnp.exp(log_std) * jax.random.normal(key, shape, mean.dtype)


def free_bits_kl(kl_NL, free_bits: float):
    """The KL term of the free-bits objective (Kingma et al. 2016, App. C.8):
    sum_j max(lambda, E_batch[KL_j]), lambda = free_bits nats per latent dimension.
    A dimension whose batch-mean KL is below lambda gets no gradient to shrink it
    further, so the encoder is not pushed to collapse it. free_bits = 0 gives the
    plain batch-mean KL summed over dimensions."""
    per_dim = jnp.mean(kl_NL, axis=0)
    return jnp.sum(jnp.maximum(per_dim, free_bits)) if free_bits > 0 else jnp.sum(per_dim)


def elbo(key, encode: Callable, log_likelihood: Callable, x, *, num_samples: int = 1):
    """Monte Carlo ELBO per example (N,) with the KL in closed form
    (Kingma & Welling 2014, eq. 10): mean over `num_samples` draws z ~ q(z|x) of
    log p(x|z), minus KL(q(z|x) || N(0, I)).

    encode(x) -> (mean_NL, log_std_NL); log_likelihood(z_NL, x) -> log p(x|z) (N,).
    """
    num_samples = check_int("num_samples", num_samples, 1)
    mean, log_std = encode(x)
    z_SNL = reparameterize(key, mean, log_std, num_samples)
    log_lik = jnp.mean(jax.vmap(lambda z: log_likelihood(z, x))(z_SNL), axis=0)
    return log_lik - jnp.sum(kl_to_standard_normal(mean, log_std), axis=-1)


def log_importance_weights(z_SNL, mean, log_std, log_likelihood: Callable, x):
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), shape (S, N)."""
    log_lik_SN = jax.vmap(lambda z: log_likelihood(z, x))(z_SNL)
    return log_lik_SN + standard_normal_log_density(z_SNL) - gaussian_log_density(z_SNL, mean, log_std)


def importance_weighted_bound(key, encode: Callable, log_likelihood: Callable, x, *, num_samples: int,
                              chunk_size: int = 100):
    """One draw of the k-sample importance-weighted bound per example (N,)
    (Burda et al. 2016, eq. 8): log (1/k) sum_i w_i, w_i = p(x, z_i) / q(z_i|x),
    z_i ~ q(z|x) (k = num_samples), a stochastic lower bound on log p(x) whose
    expectation rises with k.

    The k samples are drawn `chunk_size` at a time in a `lax.scan` that keeps a
    running log-sum-exp, so memory is that of chunk_size decoder passes per
    example (k = 1000 fits); chunk c draws from fold_in(key, c), and the last
    chunk's samples beyond k get weight 0. encode(x) -> (mean_NL, log_std_NL);
    log_likelihood(z_NL, x) -> log p(x|z) (N,).
    """
    k = check_int("num_samples", num_samples, 1)
    chunk = min(check_int("chunk_size", chunk_size, 1), k)
    num_chunks = -(-k // chunk)
    mean, log_std = encode(x)

    def one_chunk(carry, c):
        running_max, running_sum = carry
        z_SNL = reparameterize(jax.random.fold_in(key, c), mean, log_std, chunk)
        log_w = log_importance_weights(z_SNL, mean, log_std, log_likelihood, x)
        kept = (c * chunk + jnp.arange(chunk))[:, None] < k
        log_w = jnp.where(kept, log_w, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(log_w, axis=0))
        new_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(log_w - new_max), axis=0)
        return (new_max, new_sum), None

    n = mean.shape[0]
    start = (jnp.full((n,), -jnp.inf, mean.dtype), jnp.zeros((n,), mean.dtype))
    if num_chunks == 1:
        (running_max, running_sum), _ = one_chunk(start, 0)
    else:
        (running_max, running_sum), _ = jax.lax.scan(one_chunk, start, jnp.arange(num_chunks))
    return running_max + jnp.log(running_sum) - math.log(k)
