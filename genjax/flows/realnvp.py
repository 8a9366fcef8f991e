"""Assembled normalizing flows: RealNVP / neural spline flows for vectors and a
multi-scale Glow for images.

A flow is a bijection F from data x to latent z with a standard normal base, so
by the change of variables (Dinh et al. 2017, eq. 3)

    log p(x) = log N(F(x); 0, I) + log|det dF/dx|,

exact, in nats per example; samples are F^{-1}(z), z ~ N(0, I). The forward
direction (data -> latent) is the one used for training, so likelihoods cost one
pass and sampling one inverse pass.

`realnvp_bijection` and `glow_bijection` build the bijections (flax modules with
`forward_and_log_det` / `inverse_and_log_det`); `flow_model` turns any such
bijection into a `genjax.core.Model`; `make_realnvp_model` / `make_glow_model`
do both.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genjax.core import Model
from genjax.flows.bijectors import (
    ActNorm,
    Chain,
    Invertible1x1Conv,
    Logit,
    Permute,
    Reverse,
    Squeeze,
    add_log_det,
    check_event_shape,
    standard_normal_log_prob,
)
from genjax.flows.coupling import AffineCoupling, SplineCoupling

MIXINGS = ("reverse", "permute", "lu")
COUPLINGS = ("affine", "spline")


def _event(data_shape) -> tuple[int, ...]:
    return tuple(int(d) for d in data_shape)


# ----------------------------------------------------------------------------- vectors


def realnvp_bijection(
    *,
    data_shape,
    num_layers: int,
    hidden: Sequence[int],
    coupling: str = "affine",
    mixing: str = "reverse",
    actnorm: bool = True,
    log_scale_bound: float = 3.0,
    num_bins: int = 8,
    bound: float = 4.0,
    logit_alpha: float | None = None,
    seed: int = 0,
) -> Chain:
    """RealNVP (Dinh et al. 2017) or neural spline flow (Durkan et al. 2019) on vectors.

    Each of `num_layers` layers is [ActNorm] -> coupling -> mixing, where the
    coupling is `AffineCoupling` or `SplineCoupling` (conditioner MLP `hidden`,
    spline with `num_bins` bins on [-bound, bound]) and the mixing between
    couplings is a reversal ("reverse", Dinh et al. 2017), a fixed random
    permutation drawn from `seed` ("permute"), or a learned LU-parameterised
    linear map ("lu", Kingma & Dhariwal 2018). `logit_alpha` prepends
    `Logit(alpha)` for data in [0, 1].
    """
    event = _event(data_shape)
    if len(event) != 1:
        raise ValueError(f"realnvp_bijection: data_shape must be (D,) for vectors; got {event}")
    if num_layers < 1:
        raise ValueError(f"realnvp_bijection: num_layers must be >= 1; got {num_layers}")
    if coupling not in COUPLINGS:
        raise ValueError(f"realnvp_bijection: coupling={coupling!r}; expected one of {COUPLINGS}")
    if mixing not in MIXINGS:
        raise ValueError(f"realnvp_bijection: mixing={mixing!r}; expected one of {MIXINGS}")
    rng = np.random.default_rng(seed)
    layers: list[Any] = [] if logit_alpha is None else [Logit(event, logit_alpha)]
    for i in range(num_layers):
        if actnorm:
            layers.append(ActNorm(event))
        if coupling == "affine":
            layers.append(AffineCoupling(event, hidden=tuple(hidden), log_scale_bound=log_scale_bound))
        else:
            layers.append(SplineCoupling(event, hidden=tuple(hidden), num_bins=num_bins, bound=bound))
        if i == num_layers - 1:
            break
        if mixing == "reverse":
            layers.append(Reverse(event))
        elif mixing == "permute":
            layers.append(Permute(event, tuple(rng.permutation(event[-1]).tolist())))
        else:
            layers.append(Invertible1x1Conv(event))
    return Chain(tuple(layers))


# ----------------------------------------------------------------------------- images


def _scale_shapes(data_shape, num_scales):
    """Per scale: (squeezed input shape, factored-out shape or None at the last scale)."""
    h, w, c = data_shape
    shapes = []
    for i in range(num_scales):
        h, w, c = h // 2, w // 2, 4 * c
        if i < num_scales - 1:
            shapes.append(((h, w, c), (h, w, c // 2)))
            c = c // 2
        else:
            shapes.append(((h, w, c), None))
    return shapes


class MultiScaleFlow(nn.Module):
    """Glow's multi-scale architecture (Kingma & Dhariwal 2018, Fig. 2; Dinh et
    al. 2017, sec. 3.6) as one bijection from images (N, H, W, C) to flat
    latents (N, H*W*C).

    At each scale: squeeze 2x2 -> `scales[i]` (a Chain of flow steps) -> split
    the channels in half; the second half leaves the flow ("factor-out") and is
    modelled by the standard normal base, the first half goes on to the next
    scale; the last scale keeps everything. The latent is the concatenation of
    the flattened factored-out parts, in order, then the last scale's output.
    `preprocess` bijections (e.g. `Logit`) run first.
    """

    data_shape: tuple[int, ...]
    scales: tuple[Any, ...]
    preprocess: tuple[Any, ...] = ()

    def _shapes(self):
        return _scale_shapes(self.data_shape, len(self.scales))

    def forward_and_log_det(self, x):
        check_event_shape("MultiScaleFlow", x, self.data_shape)
        n = x.shape[0]
        log_det = jnp.zeros((n,), x.dtype)
        for b in self.preprocess:
            x, ld = b.forward_and_log_det(x)
            log_det = add_log_det(log_det, ld, b)
        h, outs = x, []
        for chain, (squeezed, out_shape) in zip(self.scales, self._shapes()):
            h, _ = Squeeze(h.shape[1:]).forward_and_log_det(h)
            h, ld = chain.forward_and_log_det(h)
            log_det = add_log_det(log_det, ld, chain)
            if out_shape is not None:
                keep = squeezed[-1] - out_shape[-1]
                outs.append(h[..., keep:])
                h = h[..., :keep]
        outs.append(h)
        return jnp.concatenate([o.reshape(n, -1) for o in outs], axis=1), log_det

    def inverse_and_log_det(self, z):
        size = math.prod(self.data_shape)
        check_event_shape("MultiScaleFlow (inverse)", z, (size,))
        n = z.shape[0]
        shapes = self._shapes()
        # Cut the flat latent back into the factored-out parts and the last output.
        parts, start = [], 0
        for squeezed, out_shape in shapes:
            shape = squeezed if out_shape is None else out_shape
            stop = start + math.prod(shape)
            parts.append(z[:, start:stop].reshape((n,) + shape))
            start = stop
        log_det = jnp.zeros((n,), z.dtype)
        h = parts[-1]
        for i in reversed(range(len(shapes))):
            squeezed, out_shape = shapes[i]
            if out_shape is not None:
                h = jnp.concatenate([h, parts[i]], axis=-1)
            h, ld = self.scales[i].inverse_and_log_det(h)
            log_det = add_log_det(log_det, ld, self.scales[i])
            in_shape = (2 * squeezed[0], 2 * squeezed[1], squeezed[2] // 4)
            h, _ = Squeeze(in_shape).inverse_and_log_det(h)
        for b in reversed(self.preprocess):
            h, ld = b.inverse_and_log_det(h)
            log_det = add_log_det(log_det, ld, b)
        return h, log_det

    def __call__(self, x):
        return self.forward_and_log_det(x)


@dataclasses.dataclass(frozen=True)
class UnitInterval:
    """The affine map of [low, high] onto [0, 1], y = (x - low) / (high - low),
    so that `Logit` can follow it for data in another range (e.g. [-1, 1]).
    log|det| = -D log(high - low) with D the event size."""

    event_shape: tuple[int, ...]
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "event_shape", _event(self.event_shape))
        if not self.high > self.low:
            raise ValueError(f"UnitInterval: need low < high; got low={self.low}, high={self.high}")

    def _log_det(self, x):
        return jnp.full(x.shape[:1], -math.prod(self.event_shape) * math.log(self.high - self.low), x.dtype)

    def forward_and_log_det(self, x):
        check_event_shape("UnitInterval", x, self.event_shape)
        return (x - self.low) / (self.high - self.low), self._log_det(x)

    def inverse_and_log_det(self, y):
        check_event_shape("UnitInterval", y, self.event_shape)
        return self.low + (self.high - self.low) * y, -self._log_det(y)


def glow_bijection(
    *,
    data_shape,
    num_scales: int,
    steps_per_scale: int,
    hidden: Sequence[int],
    log_scale_bound: float = 3.0,
    logit_alpha: float | None = None,
    data_range: tuple[float, float] | None = None,
) -> MultiScaleFlow:
    """Glow (Kingma & Dhariwal 2018): `num_scales` scales of squeeze ->
    [ActNorm, invertible 1x1 conv, affine coupling] x `steps_per_scale` -> split,
    with conv conditioners of widths `hidden`. data_shape = (H, W, C) with H and W
    divisible by 2^num_scales. `logit_alpha` prepends `Logit(alpha)` for data in
    [0, 1]; `data_range=(low, high)` prepends `UnitInterval(low, high)` before it,
    for data in [low, high] (e.g. (-1, 1) for dequantized images in model space).
    Every pre-processing log-det is part of the flow's, so log_prob is the density
    of the data in its own space.
    """
    event = _event(data_shape)
    if len(event) != 3:
        raise ValueError(f"glow_bijection: data_shape must be (H, W, C); got {event}")
    if num_scales < 1 or steps_per_scale < 1:
        raise ValueError(
            f"glow_bijection: num_scales and steps_per_scale must be >= 1; got "
            f"num_scales={num_scales}, steps_per_scale={steps_per_scale}"
        )
    factor = 2**num_scales
    if event[0] % factor or event[1] % factor:
        raise ValueError(
            f"glow_bijection: height and width of data_shape {event} must be divisible by "
            f"2**num_scales = {factor} to squeeze {num_scales} times"
        )
    scales = []
    for squeezed, _ in _scale_shapes(event, num_scales):
        steps: list[Any] = []
        for _ in range(steps_per_scale):
            steps += [
                ActNorm(squeezed),
                Invertible1x1Conv(squeezed),
                AffineCoupling(squeezed, hidden=tuple(hidden), log_scale_bound=log_scale_bound),
            ]
        scales.append(Chain(tuple(steps)))
    preprocess: list[Any] = []
    if data_range is not None:
        if logit_alpha is None:
            raise ValueError(f"glow_bijection: data_range={data_range!r} rescales the data for the "
                             "logit pre-processing; set logit_alpha too")
        low, high = data_range
        preprocess.append(UnitInterval(event, float(low), float(high)))
    if logit_alpha is not None:
        preprocess.append(Logit(event, logit_alpha))
    return MultiScaleFlow(event, tuple(scales), tuple(preprocess))


# ----------------------------------------------------------------------------- models


def flow_model(bijection, *, data_shape, latent_shape=None) -> Model:
    """A `Model` from a bijection F: data (N, *data_shape) -> latent (N, *latent_shape)
    with a standard normal base (latent_shape defaults to data_shape).

    init(key, batch): flax init through the forward map, so ActNorm layers get
      their data-dependent initialisation from `batch`.
    loss: mean negative log-likelihood in nats (metrics: nll, bits_per_dim).
    sample(params, key, num, temperature=1.0): F^{-1}(T z), z ~ N(0, I)
      (reduced temperature T < 1 as in Kingma & Dhariwal 2018).
    log_prob(params, key, x): the exact log p(x) in nats per example.
    """
    data_shape = _event(data_shape)
    latent_shape = data_shape if latent_shape is None else _event(latent_shape)
    num_dims = math.prod(data_shape)
    if math.prod(latent_shape) != num_dims:
        raise ValueError(
            f"flow_model: latent_shape {latent_shape} has {math.prod(latent_shape)} entries but "
            f"data_shape {data_shape} has {num_dims}; a bijection must preserve the dimension"
        )
    forward = type(bijection).forward_and_log_det
    inverse = type(bijection).inverse_and_log_det

    def check(x):
        check_event_shape(f"flow batch (data_shape={data_shape})", x, data_shape)

    def log_prob(params, key, x):
        del key  # exact and deterministic
        check(x)
        z, log_det = bijection.apply(params, x, method=forward)
        return standard_normal_log_prob(z) + log_det

    def init(key, x):
        check(x)
        return bijection.init(key, x, method=forward)

    def loss(params, key, x):
        nll = -jnp.mean(log_prob(params, key, x))
        return nll, {"nll": nll, "bits_per_dim": nll / (num_dims * math.log(2.0))}

    def sample(params, key, num, temperature: float = 1.0):
        z = temperature * jax.random.normal(key, (num,) + latent_shape)
        x, _ = bijection.apply(params, z, method=inverse)
        return x

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)


def make_realnvp_model(*, data_shape, num_layers: int, hidden: Sequence[int], coupling: str = "affine",
                       **kwargs) -> Model:
    """RealNVP / neural spline flow on vectors as a `Model`; keywords of `realnvp_bijection`."""
    bijection = realnvp_bijection(
        data_shape=data_shape, num_layers=num_layers, hidden=hidden, coupling=coupling, **kwargs)
    return flow_model(bijection, data_shape=data_shape)


def make_glow_model(*, data_shape, num_scales: int, steps_per_scale: int, hidden: Sequence[int],
                    **kwargs) -> Model:
    """Multi-scale Glow on images (H, W, C) as a `Model`; keywords of `glow_bijection`.
    Latents are flat, (N, H*W*C)."""
    bijection = glow_bijection(
        data_shape=data_shape, num_scales=num_scales, steps_per_scale=steps_per_scale,
        hidden=hidden, **kwargs)
    return flow_model(bijection, data_shape=data_shape, latent_shape=(math.prod(_event(data_shape)),))
