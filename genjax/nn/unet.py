"""A small U-Net for diffusion and flow matching on images (NHWC).

Architecture after Ho et al. 2020 ("DDPM", appendix B) and Nichol & Dhariwal
2021 ("Improved DDPM", sec 4), kept small for 8x8 digits, 28x28 MNIST and 32x32
CIFAR-10:

- time t (continuous, of order [0, 1]) -> sinusoidal features -> 2-layer MLP;
  with `num_classes` set, a learned class embedding is added to it. The
  embedding table has num_classes + 1 rows: row `num_classes` is the null label
  that classifier-free guidance trains and samples with (Ho & Salimans 2022).
- residual blocks GroupNorm -> SiLU -> conv3x3, plus a per-channel shift from
  the embedding, GroupNorm -> SiLU -> dropout -> conv3x3 (zero-initialised, so
  every block starts as the identity), with a 1x1 conv on the skip path when the
  width changes;
- optional self-attention (Vaswani et al. 2017, eq. 1) over the pixels at the
  spatial sizes listed in `attention_resolutions`;
- level i works at width channels[i]; between levels a stride-2 conv halves the
  size on the way down, nearest-neighbour upsampling + conv3x3 doubles it on the
  way up; every down-path block output is concatenated into the mirrored
  up-path block;
- GroupNorm -> SiLU -> zero-initialised conv3x3 to the output, so the
  prediction starts at exactly zero.

The net predicts whatever the loss asks (noise, x0, v or a velocity); it
does not know which. Normalisation is per example (GroupNorm, no batch
statistics), so outputs of different examples never mix.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.dropout import Dropout
from genjax.nn.mlp import sinusoidal_embedding

_zeros = nn.initializers.zeros


class ResBlock(nn.Module):
    """Residual block with an additive embedding (Ho et al. 2020, appendix B)."""

    out_channels: int
    groups: int
    dropout: float

    @nn.compact
    def __call__(self, x_NHWC, emb_NE, train: bool):
        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(x_NHWC))
        h = nn.Conv(self.out_channels, (3, 3))(h)
        h = h + nn.Dense(self.out_channels)(nn.silu(emb_NE))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
        h = Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=_zeros)(h)
        skip = x_NHWC
        if x_NHWC.shape[-1] != self.out_channels:
            skip = nn.Conv(self.out_channels, (1, 1))(x_NHWC)
        return skip + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over all H*W positions, with a zero-initialised
    output projection and a residual connection."""

    num_heads: int
    groups: int

    @nn.compact
    def __call__(self, x_NHWC):
        n, height, width, c = x_NHWC.shape
        h = nn.GroupNorm(num_groups=self.groups)(x_NHWC).reshape(n, height * width, c)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, out_kernel_init=_zeros)(h, h)
        return x_NHWC + h.reshape(n, height, width, c)


class UNet(nn.Module):
    """f(x_NHWC, t_N, labels_N) -> array shaped like x (or with `out_channels`).

    channels: width of each resolution level; the input size must be divisible
        by 2**(len(channels) - 1).
    num_res_blocks: residual blocks per level (down path and up path each).
    attention_resolutions: spatial sizes (height in pixels, e.g. (16,) for
        32x32 inputs) whose levels get self-attention after each block.
    dropout: rate inside the residual blocks; active only with train=True,
        which then needs a 'dropout' rng.
    num_classes: None for an unconditional net; otherwise labels in
        [0, num_classes], where num_classes is the null label (the default when
        no labels are given).
    time_dim: width of the time/class embedding (default 4 * channels[0]).
    groups: GroupNorm groups; must divide every width in `channels`.
    out_channels: output channels (default: those of the input).
    num_heads: attention heads.
    """

    channels: Sequence[int] = (32, 64)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    num_classes: int | None = None
    time_dim: int | None = None
    groups: int = 8
    out_channels: int | None = None
    num_heads: int = 1

    def _check(self, x_NHWC, t_N, labels_N):
        if not self.channels:
            raise ValueError("channels is empty; expected at least one level width")
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ValueError(f"channels {tuple(self.channels)} include {bad}, not divisible by groups={self.groups}")
        if x_NHWC.ndim != 4:
            raise ValueError(f"x has shape {x_NHWC.shape}; expected (N, H, W, C)")
        n, height, width, _ = x_NHWC.shape
        factor = 2 ** (len(self.channels) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"x has shape {x_NHWC.shape}: spatial size {height}x{width} is not divisible by "
                f"{factor} = 2**(len(channels) - 1) for channels={tuple(self.channels)}")
        if t_N.shape != (n,):
            raise ValueError(f"t has shape {t_N.shape}; expected () or ({n},)")
        if self.num_classes is None and labels_N is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=None); expected labels=None")
        if labels_N is not None and labels_N.shape != (n,):
            raise ValueError(f"labels have shape {labels_N.shape}; expected ({n},)")

    @nn.compact
    def __call__(self, x_NHWC, t_N, labels_N=None, train: bool = False):
        x_NHWC = jnp.asarray(x_NHWC)
        t_N = jnp.asarray(t_N, jnp.float32)
        if t_N.ndim == 0:
            t_N = jnp.full(x_NHWC.shape[:1], t_N)
        labels_N = None if labels_N is None else jnp.asarray(labels_N)
        self._check(x_NHWC, t_N, labels_N)
        n = x_NHWC.shape[0]
        time_dim = self.time_dim or 4 * self.channels[0]

        emb = sinusoidal_embedding(t_N, self.channels[0])
        emb = nn.silu(nn.Dense(time_dim, name="time_mlp_0")(emb))
        emb = nn.Dense(time_dim, name="time_mlp_1")(emb)
        if self.num_classes is not None:
            if labels_N is None:
                labels_N = jnp.full((n,), self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, time_dim, name="class_embed")(labels_N)

        def block(h, width):
            h = ResBlock(width, self.groups, self.dropout)(h, emb, train)
            if h.shape[1] in self.attention_resolutions:
                h = AttnBlock(self.num_heads, self.groups)(h)
            return h

        h = nn.Conv(self.channels[0], (3, 3), name="conv_in")(x_NHWC)
        skips = []
        for level, width in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = block(h, width)
                skips.append(h)
            if level < len(self.channels) - 1:
                h = nn.Conv(width, (3, 3), strides=(2, 2), name=f"down_{level}")(h)

        h = block(h, self.channels[-1])  # middle, at the lowest resolution

        for level in reversed(range(len(self.channels))):
            width = self.channels[level]
            for _ in range(self.num_res_blocks):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), width)
            if level > 0:
                h = jax.image.resize(h, (n, 2 * h.shape[1], 2 * h.shape[2], h.shape[3]), "nearest")
                h = nn.Conv(width, (3, 3), name=f"up_{level}")(h)

        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
        out_channels = self.out_channels or x_NHWC.shape[-1]
        return nn.Conv(out_channels, (3, 3), kernel_init=_zeros, name="conv_out")(h)


def num_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
