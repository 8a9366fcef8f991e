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


class TimeMLP(nn.Module):
    """MLP f(x, t) -> R^D with time features added to every hidden layer.

    time_embedding: "sinusoidal" or "fourier".
    """

    hidden: Sequence[int] = (256, 256, 256)
    out_dim: int | None = None
    time_embedding: str = "sinusoidal"
    time_dim: int = 64
    activation: str = "silu"

    @nn.compact
    def __call__(self, x_ND, t_N):
        if self.time_embedding == "sinusoidal":
            temb = sinusoidal_embedding(t_N, self.time_dim)
        elif self.time_embedding == "fourier":
            temb = FourierFeatures(self.time_dim)(t_N)
        else:
            raise ValueError(
                f"time_embedding={self.time_embedding!r}; expected 'sinusoidal' or 'fourier'"
            )
        act = getattr(nn, self.activation)
        temb = act(nn.Dense(self.time_dim * 2)(temb))
        h = x_ND
        for width in self.hidden:
            h = nn.Dense(width)(h) + nn.Dense(width)(temb)
            h = act(h)
        out_dim = self.out_dim or x_ND.shape[-1]
        return nn.Dense(out_dim, kernel_init=nn.initializers.zeros)(h)
