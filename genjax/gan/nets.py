"""Generator and critic networks (flax.linen) for 2-D data and 8x8 images.

Generators map a latent z_NL to samples; critics map samples to one real score
per example, shape (N,): a logit for the non-saturating and hinge losses, a
Wasserstein potential for WGAN-GP. The critics have no batch statistics, so a
critic's output for one example does not depend on the others (the gradient
penalties need per-example input gradients; Gulrajani et al. 2017, sec. 4).

Spectral normalization (Miyato et al. 2018, eq. 8): with `spectral_norm=True`
every weight matrix W of the critic (a convolution kernel reshaped to
(kh kw c_in, c_out)) is used as W / sigma(W), sigma estimated by one step of power
iteration per call from a persistent vector u (`flax.linen.SpectralNorm`). The u
vectors live in the variable collection `SPECTRAL_COLLECTION`; a call with
`update_stats=True` advances them and must then be applied with that collection
mutable. `genjax.gan.model` threads it as the model's state.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

SPECTRAL_COLLECTION = "spectral"


def _maybe_spectral(layer: nn.Module, spectral_norm: bool, power_iterations: int):
    """`layer` as a callable f(x, update_stats) -> y, spectrally normalized or plain."""
    if not spectral_norm:
        return lambda x, update_stats: layer(x)
    wrapped = nn.SpectralNorm(layer, n_steps=power_iterations, collection_name=SPECTRAL_COLLECTION)
    return lambda x, update_stats: wrapped(x, update_stats=update_stats)


class MLPGenerator(nn.Module):
    """z_NL -> x_ND: ReLU MLP with `hidden` units per layer and a linear output."""

    out_dim: int = 2
    hidden: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, z_NL):
        h = z_NL
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.out_dim)(h)


class MLPCritic(nn.Module):
    """x_ND -> scores_N: ReLU MLP (LeakyReLU with `negative_slope` > 0)."""

    hidden: Sequence[int] = (256, 256, 256)
    negative_slope: float = 0.0
    spectral_norm: bool = False
    power_iterations: int = 1

    @nn.compact
    def __call__(self, x_ND, update_stats: bool = False):
        if x_ND.ndim != 2:
            raise ValueError(f"critic input has shape {x_ND.shape}; expected (N, D)")
        h = x_ND
        for width in self.hidden:
            h = _maybe_spectral(nn.Dense(width), self.spectral_norm, self.power_iterations)(h, update_stats)
            h = nn.leaky_relu(h, self.negative_slope)
        out = _maybe_spectral(nn.Dense(1), self.spectral_norm, self.power_iterations)(h, update_stats)
        return out[:, 0]


class ConvGenerator(nn.Module):
    """z_NL -> images (N, H, W, C) in [-1, 1], DCGAN-style (Radford et al. 2016):
    a dense layer to a (H/4, W/4, 2 width) map, two stride-2 transposed
    convolutions that double the resolution while halving the width, and a 3x3
    convolution to `channels` with tanh. ReLU inside; no batch normalization (its
    statistics would be state), LayerNorm over the channels of each pixel instead."""

    image_shape: Sequence[int] = (8, 8, 1)
    width: int = 64

    @nn.compact
    def __call__(self, z_NL):
        height, width, channels = self.image_shape
        if height % 4 or width % 4:
            raise ValueError(f"image_shape {tuple(self.image_shape)}: height and width must be divisible by 4")
        h = nn.Dense((height // 4) * (width // 4) * 2 * self.width)(z_NL)
        h = h.reshape(z_NL.shape[0], height // 4, width // 4, 2 * self.width)
        h = nn.relu(nn.LayerNorm()(h))
        for w in (self.width, self.width // 2):
            h = nn.ConvTranspose(w, (4, 4), strides=(2, 2), padding="SAME")(h)
            h = nn.relu(nn.LayerNorm()(h))
        return jnp.tanh(nn.Conv(channels, (3, 3), padding="SAME")(h))


class ConvCritic(nn.Module):
    """images (N, H, W, C) -> scores_N, DCGAN-style: a 3x3 convolution, two
    stride-2 4x4 convolutions doubling the width, LeakyReLU(0.2), then a dense
    layer. No normalization layers (WGAN-GP's critic must treat examples
    independently; Gulrajani et al. 2017, sec. 4)."""

    width: int = 64
    negative_slope: float = 0.2
    spectral_norm: bool = False
    power_iterations: int = 1

    @nn.compact
    def __call__(self, x_NHWC, update_stats: bool = False):
        if x_NHWC.ndim != 4:
            raise ValueError(f"critic input has shape {x_NHWC.shape}; expected (N, H, W, C)")
        sn = lambda layer: _maybe_spectral(layer, self.spectral_norm, self.power_iterations)  # noqa: E731
        h = nn.leaky_relu(sn(nn.Conv(self.width // 2, (3, 3), padding="SAME"))(x_NHWC, update_stats),
                          self.negative_slope)
        for w in (self.width, 2 * self.width):
            h = sn(nn.Conv(w, (4, 4), strides=(2, 2), padding="SAME"))(h, update_stats)
            h = nn.leaky_relu(h, self.negative_slope)
        h = h.reshape(h.shape[0], -1)
        return sn(nn.Dense(1))(h, update_stats)[:, 0]

