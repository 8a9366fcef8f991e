"""Energy networks E_theta(x) -> one scalar per example, shape (N,).

Langevin samplers and score matching use grad_x E, and score matching also its
second derivatives, so the activations are smooth (SiLU / Swish, Ramachandran et
al. 2017; Du & Mordatch 2019 use Swish for the same reason): a ReLU energy has a
piecewise-constant gradient and a zero Hessian almost everywhere, which makes the
score-matching trace term vanish.

Every network is a pure `apply(params, x)`: no batch statistics, no dropout, so an
example's energy depends on that example only (the batched gradient of the sum of
energies is then each example's own gradient, which the samplers and losses rely
on).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS = {"silu": nn.silu, "softplus": nn.softplus, "tanh": jnp.tanh, "gelu": nn.gelu}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)} "
                         "(smooth, since grad_x E is used)")
    return ACTIVATIONS[name]


class EnergyMLP(nn.Module):
    """E(x) = w^T h_L + b with h_l = act(W_l h_{l-1} + b_l), h_0 = x flattened.

    For vector data (2-D toy densities). `hidden` are the widths of the hidden
    layers. Returns energies of shape (N,).
    """

    hidden: Sequence[int] = (128, 128, 128)
    activation: str = "silu"

    @nn.compact
    def __call__(self, x_N):
        act = _activation(self.activation)
        h = jnp.reshape(x_N, (x_N.shape[0], -1))
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        return nn.Dense(1)(h)[:, 0]


class ConvEnergy(nn.Module):
    """A small convolutional energy for images (N, H, W, C), e.g. 8x8x1 digits.

    Stages of [conv3x3 -> act -> conv3x3 with stride 2 -> act] (one per entry of
    `channels`; each halves the spatial size), then a dense layer of `dense` units
    and a linear read-out to one energy per image, shape (N,). Strided
    convolutions rather than pooling keep the map smooth in x.
    """

    channels: Sequence[int] = (32, 64)
    dense: int = 128
    activation: str = "silu"

    @nn.compact
    def __call__(self, x_NHWC):
        if x_NHWC.ndim != 4:
            raise ValueError(f"ConvEnergy takes images of shape (N, H, W, C); got shape {x_NHWC.shape}")
        act = _activation(self.activation)
        h = x_NHWC
        for width in self.channels:
            h = act(nn.Conv(width, (3, 3))(h))
            h = act(nn.Conv(width, (3, 3), strides=(2, 2))(h))
        h = jnp.reshape(h, (h.shape[0], -1))
        h = act(nn.Dense(self.dense)(h))
        return nn.Dense(1)(h)[:, 0]
