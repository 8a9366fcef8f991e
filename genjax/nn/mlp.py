"""Time-conditioned MLPs for vector data (scores, velocities, vector fields)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoidal_embedding(t_N: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer-style sinusoidal features of a scalar time (Vaswani et al. 2017, sec 3.5).

    `t` is scaled by 1000 first so that t in [0, 1] spans many periods, as in DDPM.
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
    args = 1000.0 * t_N[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class FourierFeatures(nn.Module):
    """Random Fourier features of time with a fixed Gaussian frequency matrix
    (Tancik et al. 2020; used for time by Song et al. 2021, appendix H.1)."""

    dim: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, t_N):
        w = self.param("w", nn.initializers.normal(self.scale), (self.dim // 2,))
        w = jax.lax.stop_gradient(w)
        args = 2 * jnp.pi * t_N[:, None] * w[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def class_embedding(num_classes: int | None, labels_N, batch: int, dim: int):
    """Learned class features (zero for an unconditional net); labels None = null label.

    Call inside an `nn.compact` method. The table has num_classes + 1 rows: the last
    is the "no label" of classifier-free guidance (Ho & Salimans 2021, sec. 3.2).
    """
    if num_classes is None:
        if labels_N is not None:
            raise ValueError("labels were given to an unconditional network (num_classes=None)")
        return 0.0
    if labels_N is None:
        labels_N = jnp.full((batch,), num_classes, jnp.int32)
    return nn.Embed(num_classes + 1, dim, name="class_embedding")(labels_N)


class TimeMLP(nn.Module):
    """MLP f(x, t) -> R^D with time features added to every hidden layer.

    time_embedding: "sinusoidal" or "fourier". With num_classes set, a class
    embedding (num_classes + 1 entries; the last is the null label of
    classifier-free guidance, used when labels is None) is added to the time
    features. `train` is accepted for a uniform network signature (no dropout).
    """

    hidden: Sequence[int] = (256, 256, 256)
    out_dim: int | None = None
    time_embedding: str = "sinusoidal"
    time_dim: int = 64
    activation: str = "silu"
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x_ND, t_N, labels_N=None, train: bool = False):
        del train
        if self.time_embedding == "sinusoidal":
            temb = sinusoidal_embedding(t_N, self.time_dim)
        elif self.time_embedding == "fourier":
            temb = FourierFeatures(self.time_dim)(t_N)
        else:
            raise ValueError(
                f"time_embedding={self.time_embedding!r}; expected 'sinusoidal' or 'fourier'"
            )
        temb = temb + class_embedding(self.num_classes, labels_N, t_N.shape[0], temb.shape[-1])
        act = getattr(nn, self.activation)
        temb = act(nn.Dense(self.time_dim * 2)(temb))
        h = jnp.reshape(x_ND, (x_ND.shape[0], -1))  # images are flattened
        for width in self.hidden:
            h = nn.Dense(width)(h) + nn.Dense(width)(temb)
            h = act(h)
        if self.out_dim is not None:
            return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros)(h)
        out = nn.Dense(x_ND[0].size, kernel_init=nn.initializers.zeros)(h)
        return jnp.reshape(out, x_ND.shape)
