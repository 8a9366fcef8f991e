"""Coupling layers: affine (RealNVP) and rational-quadratic spline (NSF).

A coupling layer splits the last (feature/channel) axis in two, leaves the
conditioning part x_a unchanged and transforms the other part x_b elementwise
with parameters computed from x_a (Dinh et al. 2017, eq. 4):

    y_a = x_a,   y_b = g(x_b; theta(x_a)).

The Jacobian is triangular, so log|det| = sum log|g'|. For vectors `x_ND`
theta is an MLP; for images `x_NHWC` a small conv net. The conditioner's last
layer is zero-initialised, so every coupling layer starts as the identity.
Put `Reverse`/`Permute`/`Invertible1x1Conv` between couplings, or alternate
`swap`, so every dimension gets transformed.
"""
from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from genjax.flows.bijectors import check_event_shape, rational_quadratic_spline


class MLPConditioner(nn.Module):
    """ReLU MLP x_a -> theta for vector events; zero-initialised last layer."""

    hidden: Sequence[int]
    out_features: int

    @nn.compact
    def __call__(self, x_ND):
        h = x_ND
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        zeros = nn.initializers.zeros
        return nn.Dense(self.out_features, kernel_init=zeros, bias_init=zeros)(h)


class ConvConditioner(nn.Module):
    """ReLU conv net x_a -> theta for image events (same H, W); zero-initialised last layer."""

    hidden: Sequence[int]
    out_features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x_NHWC):
        k = (self.kernel_size, self.kernel_size)
        h = x_NHWC
        for width in self.hidden:
            h = nn.relu(nn.Conv(width, k, padding="SAME")(h))
        zeros = nn.initializers.zeros
        return nn.Conv(self.out_features, k, padding="SAME", kernel_init=zeros, bias_init=zeros)(h)


class _Coupling(nn.Module):
    """Shared split / condition / merge logic; subclasses define the elementwise map.

    With D = event_shape[-1] and k = D // 2: by default x_a = x[..., :k] and
    x_b = x[..., k:]; `swap=True` exchanges the roles.
    """

    event_shape: tuple[int, ...]
    hidden: Sequence[int] = (64, 64)
    swap: bool = False

    def _params_per_dim(self) -> int:
        raise NotImplementedError

    def _transform(self, x_b, theta, inverse):
        """Elementwise map of x_b; returns (out, elementwise log|det|)."""
        raise NotImplementedError

    def setup(self):
        name = type(self).__name__
        event = tuple(self.event_shape)
        if len(event) not in (1, 3):
            raise ValueError(
                f"{name}: event shape must be (D,) for vectors or (H, W, C) for images; "
                f"got {event}"
            )
        if event[-1] < 2:
            raise ValueError(
                f"{name}: cannot split the last axis of event shape {event} into two "
                "non-empty parts (size < 2), so the coupling would not be invertible "
                "in a useful way; for images squeeze first (Squeeze) to get more channels"
            )
        d = event[-1]
        num_transformed = d // 2 if self.swap else d - d // 2
        net = MLPConditioner if len(event) == 1 else ConvConditioner
        self.conditioner = net(tuple(self.hidden), num_transformed * self._params_per_dim())

    def _split(self, x):
        k = self.event_shape[-1] // 2
        lo, hi = x[..., :k], x[..., k:]
        return (hi, lo) if self.swap else (lo, hi)

    def _merge(self, x_a, x_b):
        lo, hi = (x_b, x_a) if self.swap else (x_a, x_b)
        return jnp.concatenate([lo, hi], axis=-1)

    def _theta(self, x_a):
        raw = self.conditioner(x_a)
        return raw.reshape(*raw.shape[:-1], -1, self._params_per_dim())

    def _apply(self, x, inverse):
        check_event_shape(type(self).__name__, x, self.event_shape)
        x_a, x_b = self._split(x)
        out_b, log_det = self._transform(x_b, self._theta(x_a), inverse)
        # Elementwise map: output and log|g'| both have x_b's shape, or the sum
        # below would add up a broadcast array.
        chex.assert_equal_shape([out_b, log_det, x_b])
        return self._merge(x_a, out_b), jnp.sum(log_det.reshape(x.shape[0], -1), axis=-1)

    def forward_and_log_det(self, x):
        return self._apply(x, inverse=False)

    def inverse_and_log_det(self, y):
        return self._apply(y, inverse=True)

    def __call__(self, x):
        return self.forward_and_log_det(x)


class AffineCoupling(_Coupling):
    """Affine coupling (Dinh et al. 2017, eqs. 4-6).

    y_b = x_b * exp(s(x_a)) + t(x_a),  log|det| = sum s(x_a).
    The log-scale is soft-clamped, s = c * tanh(s_raw / c) with
    c = `log_scale_bound`, so one layer can scale by at most exp(+-c); this
    keeps early training stable and has slope 1 near 0.
    """

    log_scale_bound: float = 3.0

    def _params_per_dim(self):
        return 2

    def _transform(self, x_b, theta, inverse):
        if not self.log_scale_bound > 0:
            raise ValueError(
                f"AffineCoupling: log_scale_bound must be positive; got {self.log_scale_bound}"
            )
        shift, raw = theta[..., 0], theta[..., 1]
        c = self.log_scale_bound
        log_scale = c * jnp.tanh(raw / c)
        if inverse:
            return (x_b - shift) * jnp.exp(-log_scale), -log_scale
        return x_b * jnp.exp(log_scale) + shift, log_scale


class SplineCoupling(_Coupling):
    """Rational-quadratic spline coupling (Durkan et al. 2019, sec. 3).

    Each transformed dimension gets its own monotonic spline with `num_bins`
    bins on [-bound, bound] and identity tails; the conditioner outputs
    K widths, K heights and K - 1 interior derivatives per dimension.
    """

    num_bins: int = 8
    bound: float = 3.0
    min_bin_width: float = 1e-3
    min_bin_height: float = 1e-3
    min_derivative: float = 1e-3

    def _params_per_dim(self):
        if self.num_bins < 1:
            raise ValueError(f"SplineCoupling: num_bins must be >= 1; got {self.num_bins}")
        return 3 * self.num_bins - 1

    def _transform(self, x_b, theta, inverse):
        k = self.num_bins
        return rational_quadratic_spline(
            x_b,
            theta[..., :k],
            theta[..., k : 2 * k],
            theta[..., 2 * k :],
            bound=self.bound,
            inverse=inverse,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )
