"""The decoder's exact discrete likelihood: one L-way categorical per pixel.

Images live in model space [-1, 1] (`genjax.data.images`): integer levels x in
{0..L-1} are dequantized to y = -1 + 2 (x + u) / L. The VAE models the discrete
x itself: the encoder sees the cell centres of `to_levels(y)`, and the decoder
gives log P(x | z) = sum_d log softmax(logits_d)[x_d], an exact probability of the
discrete image (no dequantization gap). As a density on y it is piecewise
constant, p(y | z) = P(x | z) / vol(cell), vol(cell) = (2 / L)^D, so the glue's
dequantized NLL -log p(y) - log vol(cell) (Theis et al. 2016) equals -log P(x)
exactly, in nats per image of the discrete data like every other family's.

Why a categorical and not a discretized logistic (Salimans et al. 2017, eq. 2):
with 17 levels the categorical costs 17 logits per pixel, which is cheap, and it
can put most of a pixel's mass on the two ends (background 0, stroke 16) and some
on a middle level at once; the logistic is unimodal per pixel and its ordinal
smoothness is a prior meant for 256 levels.
"""

import jax
import jax.numpy as jnp

from genjax.data import images as images_lib


def levels_of(y, num_levels: int):
    """Integer levels (int32) of model-space images y in [-1, 1]."""
    return images_lib.to_levels(y, num_levels)


def categorical_log_likelihood(logits_NHWCL, levels_NHWC):
    """log P(x | z) = sum over pixels of log softmax(logits)[x] (N,), nats."""
    log_p = jax.nn.log_softmax(logits_NHWCL, axis=-1)
    picked = jnp.take_along_axis(log_p, levels_NHWC[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(picked.reshape(picked.shape[0], -1), axis=1)


def sample_levels(key, logits_NHWCL):
    """A draw x_d ~ Categorical(softmax(logits_d)) per pixel (int32)."""
    return jax.random.categorical(key, logits_NHWCL, axis=-1).astype(jnp.int32)


def most_probable_levels(logits_NHWCL):
    """argmax_x P(x_d | z) per pixel (int32)."""
    return jnp.argmax(logits_NHWCL, axis=-1).astype(jnp.int32)
