"""A small CNN image classifier whose penultimate features define an FID-like score.

Heusel et al. 2017 compare generated and real images through the Fréchet
distance between Gaussians fitted to a classifier's features (Inception-v3 for
natural images); on small images a classifier trained on the dataset itself
plays that role (as LeNet features do for MNIST in the literature).

Architecture: two stages of [conv3x3 -> SiLU -> conv3x3 -> SiLU -> 2x2 average
pool], flatten, a dense layer of `feature_dim` units with SiLU (the features),
optional dropout, and a dense layer to the logits. No batch statistics, so
`apply` is a pure function of (params, x).
"""
from typing import Sequence

import flax.linen as nn


class DigitsClassifier(nn.Module):
    """apply(params, x_NHWC, train=False) -> (logits_NK, features_NF).

    Inputs are images scaled to about [-1, 1]; the spatial size must be
    divisible by 2**len(channels). Dropout (rate `dropout`, on the features
    before the logits) acts only with train=True and then needs a 'dropout' rng.
    """

    num_classes: int = 10
    channels: Sequence[int] = (32, 64)
    feature_dim: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        if x_NHWC.ndim != 4:
            raise ValueError(f"x has shape {x_NHWC.shape}; expected (N, H, W, C)")
        factor = 2 ** len(self.channels)
        if x_NHWC.shape[1] % factor or x_NHWC.shape[2] % factor:
            raise ValueError(f"x has shape {x_NHWC.shape}: spatial size not divisible by {factor} "
                             f"= 2**len(channels) for channels={tuple(self.channels)}")
        h = x_NHWC
        for width in self.channels:
            h = nn.silu(nn.Conv(width, (3, 3))(h))
            h = nn.silu(nn.Conv(width, (3, 3))(h))
            h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = h.reshape(h.shape[0], -1)
        features_NF = nn.silu(nn.Dense(self.feature_dim)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(features_NF)
        logits_NK = nn.Dense(self.num_classes)(h)
        return logits_NK, features_NF
