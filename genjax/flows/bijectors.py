"""Elementary bijections for normalizing flows.

Every bijection computes its output and the log-absolute-determinant of its
Jacobian together (the flowjax / distrax protocol):

    y, logdet_N = b.forward_and_log_det(x)
    x, logdet_N = b.inverse_and_log_det(y)

`logdet_N` is per example, summed over the event dimensions, and the inverse's
log-det is minus the forward's. Inputs carry exactly one batch axis in front of
an explicit event shape: vectors `x_ND` (event `(D,)`) or images `x_NHWC`
(event `(H, W, C)`).

Parameter-free bijections are frozen dataclasses and are called directly.
Parameterised ones are `flax.linen` Modules, so `init`/`apply` stay pure:

    params = ActNorm((D,)).init(key, x_ND)          # data-dependent init
    x_ND, ld = ActNorm((D,)).apply(params, y_ND, method=ActNorm.inverse_and_log_det)

`Chain` composes both kinds. `standard_normal_log_prob` is the base density
N(0, I) that every flow maps its data to.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def check_event_shape(name: str, x: jax.Array, event_shape: Sequence[int]) -> None:
    """Raises ValueError unless `x` has shape `(N, *event_shape)`."""
    event_shape = tuple(event_shape)
    if x.ndim != len(event_shape) + 1 or tuple(x.shape[1:]) != event_shape:
        raise ValueError(
            f"{name} expects input of shape (N, *{event_shape}), i.e. one batch "
            f"axis followed by event shape {event_shape}; got shape {tuple(x.shape)}"
        )


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
    """log N(z; 0, I) per example, summed over the event dimensions: the base
    density of every flow in `genjax.flows`."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2.0 * math.pi)


def add_log_det(log_det_N: jax.Array, ld: jax.Array, layer: Any) -> jax.Array:
    """`log_det_N + ld`, asserting that `ld` is per example like the running total.

    A layer that returned a scalar or an (N, 1) log-det would otherwise broadcast
    into the total silently; every composition of bijections adds through here.
    """
    chex.assert_shape(ld, log_det_N.shape, custom_message=f"log-det of {type(layer).__name__}")
    return log_det_N + ld


def _batch_zeros(x: jax.Array) -> jax.Array:
    return jnp.zeros(x.shape[:1], x.dtype)


def _sum_event(a: jax.Array) -> jax.Array:
    """Sums every axis but the leading batch axis."""
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def _as_shape(event_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in event_shape)


# ----------------------------------------------------------------------------
# Parameter-free bijections.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Permute:
    """A fixed permutation of the last (feature/channel) axis; log-det 0.

    `y[..., i] = x[..., permutation[i]]`.
    """

    event_shape: tuple[int, ...]
    permutation: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "event_shape", _as_shape(self.event_shape))
        object.__setattr__(self, "permutation", tuple(int(i) for i in self.permutation))
        size = self.event_shape[-1] if self.event_shape else 0
        if sorted(self.permutation) != list(range(size)):
            raise ValueError(
                f"Permute: permutation {self.permutation} is not a permutation of "
                f"range({size}) for the last axis of event shape {self.event_shape}"
            )

    def forward_and_log_det(self, x):
        check_event_shape("Permute", x, self.event_shape)
        return x[..., np.asarray(self.permutation)], _batch_zeros(x)

    def inverse_and_log_det(self, y):
        check_event_shape("Permute", y, self.event_shape)
        return y[..., np.argsort(self.permutation)], _batch_zeros(y)


def random_permutation(key: jax.Array, event_shape: Sequence[int]) -> Permute:
    """A `Permute` of the last axis drawn uniformly at random from `key`."""
    event_shape = _as_shape(event_shape)
    perm = jax.random.permutation(key, event_shape[-1])
    return Permute(event_shape, tuple(np.asarray(perm).tolist()))


@dataclasses.dataclass(frozen=True)
class Reverse:
    """Reverses the last (feature/channel) axis; log-det 0.

    Placed between coupling layers so every dimension gets transformed
    (Dinh et al. 2017, sec. 3.4).
    """

    event_shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "event_shape", _as_shape(self.event_shape))

    def forward_and_log_det(self, x):
        check_event_shape("Reverse", x, self.event_shape)
        return x[..., ::-1], _batch_zeros(x)

    def inverse_and_log_det(self, y):
        check_event_shape("Reverse", y, self.event_shape)
        return y[..., ::-1], _batch_zeros(y)


@dataclasses.dataclass(frozen=True)
class Logit:
    """Logit pre-processing for data in [0, 1] (Dinh et al. 2017, sec. 4.1).

    y = logit(u),  u = alpha + (1 - 2 alpha) x, so the map stays finite at the
    boundary. Per dimension dy/dx = (1 - 2 alpha) / (u (1 - u)).
    """

    event_shape: tuple[int, ...]
    alpha: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "event_shape", _as_shape(self.event_shape))
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"Logit: alpha must lie in (0, 0.5); got {self.alpha}")

    def forward_and_log_det(self, x):
        check_event_shape("Logit", x, self.event_shape)
        u = self.alpha + (1.0 - 2.0 * self.alpha) * x
        y = jnp.log(u) - jnp.log1p(-u)
        log_dydx = math.log1p(-2.0 * self.alpha) - jnp.log(u) - jnp.log1p(-u)
        return y, _sum_event(log_dydx)

    def inverse_and_log_det(self, y):
        check_event_shape("Logit", y, self.event_shape)
        x = (jax.nn.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)
        # log u = -softplus(-y), log(1 - u) = -softplus(y): stable for large |y|.
        log_dxdy = -jax.nn.softplus(-y) - jax.nn.softplus(y) - math.log1p(-2.0 * self.alpha)
        return x, _sum_event(log_dxdy)


@dataclasses.dataclass(frozen=True)
class Squeeze:
    """2x2 space-to-depth for multi-scale flows (Dinh et al. 2017, sec. 3.6).

    (N, H, W, C) -> (N, H/2, W/2, 4C); a permutation, so log-det 0.
    `event_shape` is the input's `(H, W, C)`; H and W must be even.
    """

    event_shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "event_shape", _as_shape(self.event_shape))
        if len(self.event_shape) != 3:
            raise ValueError(
                f"Squeeze: event shape must be (H, W, C); got {self.event_shape}"
            )
        h, w, _ = self.event_shape
        if h % 2 or w % 2:
            raise ValueError(
                f"Squeeze: height and width must be even to squeeze 2x2 blocks; "
                f"got event shape {self.event_shape}"
            )

    @property
    def out_event_shape(self) -> tuple[int, int, int]:
        h, w, c = self.event_shape
        return (h // 2, w // 2, 4 * c)

    def forward_and_log_det(self, x):
        check_event_shape("Squeeze", x, self.event_shape)
        n, (h, w, c) = x.shape[0], self.event_shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(n, *self.out_event_shape), _batch_zeros(x)

    def inverse_and_log_det(self, y):
        check_event_shape("Squeeze (inverse)", y, self.out_event_shape)
        n, (h, w, c) = y.shape[0], self.event_shape
        y = y.reshape(n, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h, w, c), _batch_zeros(y)


# ----------------------------------------------------------------------------
# Rational-quadratic spline (elementwise).
# ----------------------------------------------------------------------------


def rational_quadratic_spline(
    x: jax.Array,
    unnormalized_widths: jax.Array,
    unnormalized_heights: jax.Array,
    unnormalized_derivatives: jax.Array,
    *,
    bound: float,
    inverse: bool = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[jax.Array, jax.Array]:
    """Elementwise monotonic rational-quadratic spline (Durkan et al. 2019).

    K bins cover [-bound, bound] in both input and output; outside it the map is
    the identity ("linear tails"), so the boundary derivatives are fixed to 1.

    Args:
      x: input, any shape S (the output `y` when `inverse=True`).
      unnormalized_widths, unnormalized_heights: shape S + (K,); a softmax
        gives bin fractions, floored at `min_bin_width` / `min_bin_height`.
      unnormalized_derivatives: shape S + (K - 1,), the interior knots;
        derivative = min_derivative + softplus(. + c) with c chosen so that
        zeros give derivative 1. All-zero parameters give the identity.
      bound: B, the half-width of the spline's interval.
      inverse: evaluate the inverse map.

    Returns:
      (output, log|d output / d input|), both of shape S, elementwise.
    """
    if not bound > 0:
        raise ValueError(f"rational_quadratic_spline: bound must be positive; got {bound}")
    num_bins = unnormalized_widths.shape[-1]
    if unnormalized_heights.shape[-1] != num_bins or unnormalized_derivatives.shape[-1] != num_bins - 1:
        raise ValueError(
            "rational_quadratic_spline: need K widths, K heights and K-1 derivatives; got "
            f"{unnormalized_widths.shape[-1]}, {unnormalized_heights.shape[-1]}, "
            f"{unnormalized_derivatives.shape[-1]}"
        )
    if min_bin_width * num_bins >= 1.0 or min_bin_height * num_bins >= 1.0:
        raise ValueError(
            f"rational_quadratic_spline: min_bin_width={min_bin_width} and "
            f"min_bin_height={min_bin_height} must each be < 1/K = 1/{num_bins}"
        )

    def knots(unnormalized, min_size):
        frac = min_size + (1.0 - min_size * num_bins) * jax.nn.softmax(unnormalized, axis=-1)
        size = 2.0 * bound * frac
        inner = -bound + jnp.cumsum(size, axis=-1)[..., :-1]
        lo = jnp.full(size.shape[:-1] + (1,), -bound, size.dtype)
        # End knots set exactly, so cumsum rounding cannot open a gap at +-B.
        return size, jnp.concatenate([lo, inner, -lo], axis=-1)

    widths, knots_x = knots(unnormalized_widths, min_bin_width)
    heights, knots_y = knots(unnormalized_heights, min_bin_height)
    offset = math.log(math.expm1(1.0 - min_derivative))
    interior = min_derivative + jax.nn.softplus(unnormalized_derivatives + offset)
    ones = jnp.ones(interior.shape[:-1] + (1,), interior.dtype)
    derivs = jnp.concatenate([ones, interior, ones], axis=-1)

    inside = (x >= -bound) & (x <= bound)
    x_in = jnp.clip(x, -bound, bound)  # keeps the unused branch finite under grad
    search = knots_y if inverse else knots_x
    k = jnp.sum(x_in[..., None] >= search[..., 1:-1], axis=-1)

    def at_bin(a):
        return jnp.take_along_axis(a, k[..., None], axis=-1)[..., 0]

    x_k, y_k = at_bin(knots_x[..., :-1]), at_bin(knots_y[..., :-1])
    w_k, h_k = at_bin(widths), at_bin(heights)
    d_k, d_k1 = at_bin(derivs[..., :-1]), at_bin(derivs[..., 1:])
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2.0 * s_k

    if inverse:
        # Appendix A.3: xi is the root in [0, 1] of a xi^2 + b xi + c = 0,
        # written as 2c / (-b - sqrt(b^2 - 4ac)) to avoid cancellation.
        dy = x_in - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        disc = jnp.maximum(b * b - 4.0 * a * c, 0.0)
        xi = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
        out = x_k + xi * w_k
    else:
        xi = jnp.clip((x_in - x_k) / w_k, 0.0, 1.0)
        xi1 = xi * (1.0 - xi)
        # eq. 4: g = y_k + h_k [s_k xi^2 + d_k xi(1-xi)] / [s_k + curvature xi(1-xi)]
        out = y_k + h_k * (s_k * xi**2 + d_k * xi1) / (s_k + curvature * xi1)

    xi1 = xi * (1.0 - xi)
    # eq. 5: dg/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi(1-xi) + d_k (1-xi)^2] / denom^2
    log_dydx = (
        2.0 * jnp.log(s_k)
        + jnp.log(d_k1 * xi**2 + 2.0 * s_k * xi1 + d_k * (1.0 - xi) ** 2)
        - 2.0 * jnp.log(s_k + curvature * xi1)
    )
    log_det = -log_dydx if inverse else log_dydx
    return jnp.where(inside, out, x), jnp.where(inside, log_det, 0.0)


# ----------------------------------------------------------------------------
# Parameterised bijections (flax.linen).
# ----------------------------------------------------------------------------


class ActNorm(nn.Module):
    """Per-channel affine y = (x + b) * exp(log_scale) (Kingma & Dhariwal 2018, sec. 3.1).

    Data-dependent initialisation: when initialised through the forward map,
    b and log_scale are set from the init batch so that the output has zero
    mean and unit variance per channel (last axis; statistics pool the batch
    and any spatial axes). Initialised through the inverse, it starts at the
    identity. log-det = (#positions per example) * sum(log_scale).
    """

    event_shape: tuple[int, ...]
    eps: float = 1e-6

    @nn.compact
    def _bias_and_log_scale(self, x_init):
        channels = self.event_shape[-1]
        if x_init is None:
            bias = self.param("bias", nn.initializers.zeros, (channels,))
            log_scale = self.param("log_scale", nn.initializers.zeros, (channels,))
        else:
            # Initialisers close over the batch; they run only inside `init`.
            axes = tuple(range(x_init.ndim - 1))
            bias = self.param("bias", lambda _: -jnp.mean(x_init, axis=axes))
            log_scale = self.param(
                "log_scale", lambda _: -jnp.log(jnp.std(x_init, axis=axes) + self.eps)
            )
        return bias, log_scale

    def _log_det(self, x, log_scale):
        positions = math.prod(self.event_shape[:-1])
        return jnp.full(x.shape[:1], positions * jnp.sum(log_scale), x.dtype)

    def forward_and_log_det(self, x):
        check_event_shape("ActNorm", x, self.event_shape)
        bias, log_scale = self._bias_and_log_scale(x)
        return (x + bias) * jnp.exp(log_scale), self._log_det(x, log_scale)

    def inverse_and_log_det(self, y):
        check_event_shape("ActNorm", y, self.event_shape)
        bias, log_scale = self._bias_and_log_scale(None)
        return y * jnp.exp(-log_scale) - bias, -self._log_det(y, log_scale)

    def __call__(self, x):
        return self.forward_and_log_det(x)


def _init_lu(key, channels, dtype=jnp.float32):
    """LU factors of a random rotation (Kingma & Dhariwal 2018, sec. 3.2).

    Glow writes W = P L (U + diag(s)). If Q = P L U is a random rotation, then
    P^T Q D (D = diag(sign(diag U))) is again a random rotation with the
    unpivoted factors L and U D, whose diagonal is positive. So P = I and
    sign(s) = +1 lose nothing at initialisation.
    """
    q, _ = jnp.linalg.qr(jax.random.normal(key, (channels, channels), jnp.float32))
    _, lower, upper = jax.scipy.linalg.lu(q)
    upper = upper * jnp.sign(jnp.diag(upper))[None, :]
    return {
        "lower": jnp.tril(lower, -1).astype(dtype),
        "upper": jnp.triu(upper, 1).astype(dtype),
        "log_s": jnp.log(jnp.diag(upper)).astype(dtype),
    }


class Invertible1x1Conv(nn.Module):
    """Invertible 1x1 convolution, LU-parameterised (Kingma & Dhariwal 2018, sec. 3.2).

    Each position's channel vector is mapped by W = L (U + diag(exp(log_s))),
    L unit lower-triangular, U strictly upper-triangular, so
    log|det| = (#positions) * sum(log_s) and the inverse is two triangular
    solves. With event shape (D,) it is a learned invertible linear map of
    vectors; with (H, W, C) it is Glow's 1x1 convolution.
    """

    event_shape: tuple[int, ...]

    def setup(self):
        self.lu = self.param("lu", _init_lu, self.event_shape[-1])

    def _factors(self):
        c = self.event_shape[-1]
        lower = jnp.tril(self.lu["lower"], -1) + jnp.eye(c, dtype=self.lu["lower"].dtype)
        upper = jnp.triu(self.lu["upper"], 1) + jnp.diag(jnp.exp(self.lu["log_s"]))
        return lower, upper

    def weight(self) -> jax.Array:
        """The C x C matrix W."""
        lower, upper = self._factors()
        return lower @ upper

    def _log_det(self, x):
        positions = math.prod(self.event_shape[:-1])
        return jnp.full(x.shape[:1], positions * jnp.sum(self.lu["log_s"]), x.dtype)

    def forward_and_log_det(self, x):
        check_event_shape("Invertible1x1Conv", x, self.event_shape)
        return jnp.einsum("...c,dc->...d", x, self.weight()), self._log_det(x)

    def inverse_and_log_det(self, y):
        check_event_shape("Invertible1x1Conv", y, self.event_shape)
        lower, upper = self._factors()
        y_CM = y.reshape(-1, y.shape[-1]).T
        z_CM = jax.scipy.linalg.solve_triangular(lower, y_CM, lower=True, unit_diagonal=True)
        x_CM = jax.scipy.linalg.solve_triangular(upper, z_CM, lower=False)
        return x_CM.T.reshape(y.shape), -self._log_det(y)

    def __call__(self, x):
        return self.forward_and_log_det(x)


class Chain(nn.Module):
    """Composition of bijections: layers[0] is applied first.

    Log-dets add; the inverse runs the layers' inverses in reverse order.
    `layers` may mix frozen-dataclass bijections and flax bijection modules
    (which become submodules `layers_0`, `layers_1`, ...); each only needs
    `forward_and_log_det` and `inverse_and_log_det`.
    """

    layers: Sequence[Any]

    def forward_and_log_det(self, x):
        log_det = _batch_zeros(x)
        for layer in self.layers:
            x, ld = layer.forward_and_log_det(x)
            log_det = add_log_det(log_det, ld, layer)
        return x, log_det

    def inverse_and_log_det(self, y):
        log_det = _batch_zeros(y)
        for layer in reversed(self.layers):
            y, ld = layer.inverse_and_log_det(y)
            log_det = add_log_det(log_det, ld, layer)
        return y, log_det

    def __call__(self, x):
        return self.forward_and_log_det(x)
