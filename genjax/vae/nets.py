"""Convolutional encoders and decoders (flax.linen) for small images (N, H, W, C).

Each stage is a 3x3 convolution followed by a stride-2 one (H and W must be
divisible by 2^len(channels)); the decoders mirror it with stride-2 transposed
convolutions and end in L logits per pixel and channel, (N, H, W, C, L), for the
categorical likelihood of `genjax.vae.likelihood`. No batch statistics: every
example is encoded and decoded on its own, so an importance-weighted bound's
samples do not interact. `dropout_rate` (Srivastava et al. 2014) drops units of
the dense layers when called with train=True (rng collection "dropout"); with
1000 training images the 17-way decoder overfits without it.

  GaussianEncoder   x -> (mean_NL, log_std_NL) of q(z|x) (Kingma & Welling 2014, App. C.2)
  LatentDecoder     z_NL -> logits of p(x|z)
  GridEncoder       x -> z_e (N, h, w, D): one vector per cell of a coarse grid (VQ-VAE)
  GridDecoder       z_q (N, h, w, D) -> logits of p(x|z_q)
"""
from typing import Sequence

import flax.linen as nn



def _downsample(x, channels: Sequence[int]):
    for c in channels:
        x = nn.gelu(nn.Conv(c, (3, 3))(x))
        x = nn.gelu(nn.Conv(c, (3, 3), strides=(2, 2))(x))
    return x


def _upsample_to_logits(h, channels: Sequence[int], image_channels: int, num_levels: int):
    for c in reversed(channels):
        h = nn.gelu(nn.ConvTranspose(c, (3, 3), strides=(2, 2))(h))
        h = nn.gelu(nn.Conv(c, (3, 3))(h))
    logits = nn.Conv(image_channels * num_levels, (1, 1))(h)
    return logits.reshape(logits.shape[:3] + (image_channels, num_levels))


class GaussianEncoder(nn.Module):
    """x (N, H, W, C) -> (mean, log_std), each (N, latent_dim)."""

    latent_dim: int
    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = _downsample(x, self.channels).reshape(x.shape[0], -1)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.gelu(nn.Dense(self.hidden)(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        out = nn.Dense(2 * self.latent_dim)(h)
        return out[:, : self.latent_dim], out[:, self.latent_dim:]


class LatentDecoder(nn.Module):
    """z (N, latent_dim) -> logits (N, H, W, C, num_levels)."""

    image_shape: tuple
    num_levels: int
    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, z, train: bool = False):
        height, width, image_channels = self.image_shape
        scale = 2 ** len(self.channels)
        h = nn.gelu(nn.Dense(self.hidden)(z))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.gelu(nn.Dense((height // scale) * (width // scale) * self.channels[-1])(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = h.reshape(z.shape[0], height // scale, width // scale, self.channels[-1])
        return _upsample_to_logits(h, self.channels, image_channels, self.num_levels)


class GridEncoder(nn.Module):
    """x (N, H, W, C) -> z_e (N, H / 2^s, W / 2^s, code_dim), s = len(channels)."""

    code_dim: int
    channels: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x):
        h = _downsample(x, self.channels)
        h = nn.gelu(nn.Conv(self.channels[-1], (3, 3))(h))
        return nn.Conv(self.code_dim, (1, 1))(h)


class GridDecoder(nn.Module):
    """z_q (N, h, w, code_dim) -> logits (N, h 2^s, w 2^s, C, num_levels)."""

    image_channels: int
    num_levels: int
    channels: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, z):
        h = nn.gelu(nn.Conv(self.channels[-1], (3, 3))(z))
        return _upsample_to_logits(h, self.channels, self.image_channels, self.num_levels)


def check_divisible(image_shape, channels) -> None:
    """ValueError unless H and W are divisible by 2^len(channels)."""
    scale = 2 ** len(tuple(channels))
    if len(image_shape) != 3 or image_shape[0] % scale or image_shape[1] % scale:
        raise ValueError(f"images of shape {tuple(image_shape)} with channels={tuple(channels)} "
                         f"({len(tuple(channels))} stride-2 stages); expected (H, W, C) with H and W "
                         f"divisible by {scale}")


