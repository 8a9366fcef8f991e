"""Classifier-free guidance (Ho & Salimans 2021), shared by diffusion and flow matching.

One network learns both p(x | c) and p(x): during training each label is replaced by
a reserved null label with probability p_uncond (`drop_labels`), so the network also
sees "no class". At sampling time the two predictions are mixed (their eq. 6):

    pred_w(x, t, c) = (1 + w) pred(x, t, c) - w pred(x, t, null)

Convention: w = 0 is the plain conditional model; w > 0 strengthens the condition.
(Some codebases write the scale s = 1 + w instead.) For a score this is
score_c + w grad log p(c | x_t), the gradient of log p_t(x | c) p_t(c | x)^w
(their eq. 3-4 with the implicit classifier p(c | x) proportional to p(x | c) / p(x)).

The weights (1 + w) and -w sum to one, so the mix commutes with every prediction
that is an affine function of the score at fixed (x, t): eps, score, x0, v, and the
velocity of a Gaussian flow-matching path. Guidance therefore wraps whatever the
network predicts, before any conversion.

Labels are arrays with a leading batch axis: integer class ids (N,) with the null
label an id the classes do not use (often num_classes), or any (N, ...) encoding
with a null of the trailing shape.
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp


def _concrete_float(value):
    """float(value) when value is concrete, else None (a traced weight or probability)."""
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def check_guidance(guidance, num_classes) -> float:
    """Checks a guidance weight against the model it is asked of; returns float(guidance)
    (or the traced weight itself, whose value cannot be checked under jit).

    Raises ValueError when
      * guidance is not a finite number >= 0. Negative weights are rejected: w = -1 is
        the unconditional model (sample with the null label instead) and -1 < w < 0
        only blends the two, so a negative value is almost always the s = 1 + w
        convention mistaken for w;
      * guidance != 0 is asked of an unconditional model (num_classes is None),
        which has no conditional prediction to contrast;
      * num_classes is given but is not an int >= 1.
    """
    w = _concrete_float(guidance)
    if w is None:  # a traced weight (a jitted or vmapped sweep): only the model is checked
        if num_classes is None:
            raise ValueError("a guidance weight needs a class-conditional model, but num_classes is None")
    elif not math.isfinite(w) or w < 0.0:
        raise ValueError(f"guidance must be a finite number >= 0 (0 = conditional model), got {guidance!r}")
    elif num_classes is None:
        if w != 0.0:
            raise ValueError(f"guidance {w!r} needs a class-conditional model, but num_classes is None")
        return w
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
    return guidance if w is None else w


def split_batch(batch, conditional: bool):
    """(x, labels) from a batch: an array, or a dict with "x" and (if conditional) "label"."""
    if isinstance(batch, dict):
        if conditional and "label" not in batch:
            raise ValueError(f"a class-conditional batch needs keys 'x' and 'label'; got {sorted(batch)}")
        return batch["x"], (batch["label"] if conditional else None)
    if conditional:
        raise ValueError("a class-conditional model needs batches {'x': ..., 'label': ...}")
    return batch, None


def cycled_labels(num: int, num_classes: int) -> jax.Array:
    """Labels 0, 1, ..., num_classes - 1, 0, 1, ... for `num` samples."""
    return jnp.arange(num, dtype=jnp.int32) % num_classes


def network_prediction(net, params, key=None) -> Callable:
    """pred(x, t, labels) = net.apply(params, x, t, labels); dropout is active
    (train=True) only when a key is given."""

    def pred(x, t, labels):
        if key is None:
            return net.apply(params, x, t, labels)
        return net.apply(params, x, t, labels, train=True, rngs={"dropout": key})

    return pred


def _null_like(labels, null_label):
    """The null label broadcast to labels' shape and dtype."""
    return jnp.broadcast_to(jnp.asarray(null_label, labels.dtype), labels.shape)


def drop_labels(key, labels_N, null_label, p_uncond):
    """Replaces each example's label by null_label with probability p_uncond,
    independently (Ho & Salimans 2021, Algorithm 1). labels_N: (N,) or (N, ...)."""
    p = _concrete_float(p_uncond)
    if p is not None and not 0.0 <= p <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
    labels_N = jnp.asarray(labels_N)
    drop_N = jax.random.bernoulli(key, p_uncond, (labels_N.shape[0],))
    drop = jnp.reshape(drop_N, drop_N.shape + (1,) * (labels_N.ndim - 1))
    return jnp.where(drop, _null_like(labels_N, null_label), labels_N)


def guided(pred_fn: Callable, labels_N, null_label, guidance) -> Callable:
    """fn(x, t) = (1 + w) pred_fn(x, t, labels) - w pred_fn(x, t, null)
    (Ho & Salimans 2021, eq. 6; w = `guidance`, w = 0 is the conditional model).

    pred_fn(x, t, labels) is any network output affine in the score at fixed (x, t)
    (see the module doc), with t of shape (N,) or a scalar; fn has the signature
    the samplers expect. Both halves come from ONE call of pred_fn on the batch
    [x; x] with labels [labels; null] (t doubled when it is per example), so a
    guided step costs one network call of batch 2N. When guidance is a concrete 0
    only the conditional half is evaluated. guidance may be traced (vmapped weights).
    """
    labels_N = jnp.asarray(labels_N)
    n = labels_N.shape[0]

    def check_batch(x):
        if x.shape[0] != n:
            raise ValueError(f"x has batch {x.shape[0]} but {n} labels were given; expected equal")

    if _concrete_float(guidance) == 0.0:

        def conditional(x, t):
            check_batch(x)
            return pred_fn(x, t, labels_N)

        return conditional

    labels_2N = jnp.concatenate([labels_N, _null_like(labels_N, null_label)])

    def fn(x, t):
        check_batch(x)
        t = jnp.asarray(t)
        t_2N = t if t.ndim == 0 else jnp.concatenate([t, t])
        out = pred_fn(jnp.concatenate([x, x]), t_2N, labels_2N)
        cond, uncond = out[:n], out[n:]
        # (1 + w) c - w u written as c + w (c - u): exact at w = 0, one rounding less.
        return cond + jnp.asarray(guidance, cond.dtype) * (cond - uncond)

    return fn
