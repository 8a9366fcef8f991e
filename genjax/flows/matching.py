"""Flow matching (Lipman et al. 2023): the loss and the model.

Time convention (that of every module in `genjax.flows`): t = 0 is the standard
normal noise x0 and t = 1 is the data x1. A learned velocity field
`velocity_fn(x, t) -> v`, with x of shape (N, *event) and t of shape (N,),
carries noise to data along dx/dt = v(x, t).

The pieces combine freely (as in Meta's flow_matching library), one file each:

* the probability path and its scheduler (`genjax.flows.paths`);
* the coupling of noise and data: independent, or mini-batch optimal transport
  (`genjax.flows.ot_coupling`, Tong et al. 2023);
* the *loss*, here: it regresses v(x_t, t) on the path's velocity u_t
  (conditional flow matching, Lipman et al. 2023, eq. 9; rectified flow, Liu et
  al. 2023, eq. 1);
* sampling and likelihoods solve the flow ODE (`genjax.flows.ode`) through
  `genjax.integrate`, the one ODE path of the library.

`make_flow_matching_model` puts them together as a `genjax.core.Model`.
"""
from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from genjax import guidance as guidance_lib
from genjax.core import Model
from genjax.flows.bijectors import check_event_shape
from genjax.flows.ode import log_likelihood, ode_sample
from genjax.flows.ot_coupling import minibatch_ot_coupling
from genjax.flows.paths import AffinePath, cond_ot_path

# ----------------------------------------------------------------------------- losses


def _uniform_time(key, n, dtype):
    return jax.random.uniform(key, (n,), dtype)


def paired_flow_matching_loss(key, path, velocity_fn: Callable, x0, x1):
    """Flow matching on given pairs (x0, x1): per-example ||v(x_t, t) - u_t||^2,
    summed over the event dimensions, t ~ U[0, 1].

    With independent pairs this is conditional flow matching (Lipman et al. 2023,
    eq. 9); with the pairs of `genjax.flows.rectified.reflow_pairs` and the straight
    path it is the rectified-flow objective of the next reflow round (Liu et al.
    2023, eq. 1). Returns the loss of shape (N,).
    """
    if x0.shape != x1.shape:
        raise ValueError(
            f"paired_flow_matching_loss: noise x0 has shape {x0.shape} but data x1 has shape {x1.shape}"
        )
    t = _uniform_time(key, x1.shape[0], x1.dtype)
    x_t = path.sample_xt(x0, x1, t)
    v, u = velocity_fn(x_t, t), path.target_velocity(x0, x1, t)
    # A field of another shape (say (N, 1)) would broadcast against the target.
    chex.assert_equal_shape([v, u, x1], custom_message="velocity_fn(x_t, t) vs the path's velocity")
    return jnp.sum((v - u).reshape(x1.shape[0], -1) ** 2, axis=1)


def flow_matching_loss(key, path, velocity_fn: Callable, x1, coupling: Callable | None = None):
    """Conditional flow matching (Lipman et al. 2023, eq. 9) with noise x0 ~ N(0, I)
    drawn here and paired with the data x1 by `coupling(key, x0, x1) -> (x0, x1)`
    (None: independent pairs; `ot_coupling.minibatch_ot_coupling`: OT-CFM, Tong et
    al. 2023).

    Its gradient equals that of the marginal flow matching loss (Lipman et al.
    2023, Thm. 2). Returns the per-example loss of shape (N,).
    """
    noise_key, coupling_key, time_key = jax.random.split(key, 3)
    x0 = jax.random.normal(noise_key, x1.shape, x1.dtype)
    if coupling is not None:
        x0, x1 = coupling(coupling_key, x0, x1)
    return paired_flow_matching_loss(time_key, path, velocity_fn, x0, x1)


# ----------------------------------------------------------------------------- model


def make_flow_matching_model(
    net,
    *,
    data_shape,
    path: AffinePath | None = None,
    ot_coupling: bool = False,
    paired: bool = False,
    num_classes: int | None = None,
    label_dropout: float = 0.1,
) -> Model:
    """A flow matching model whose network is the velocity field.

    The network is called as `net.apply(params, x, t, labels)` (labels None for an
    unconditional model), and in the loss with `train=True, rngs={"dropout": key}`,
    the signature of `genjax.nn` nets (TimeMLP, UNet) shared with the diffusion model.

    path: the probability path (default: conditional OT, `paths.cond_ot_path()`).
    ot_coupling: pair noise and data by mini-batch OT (Tong et al. 2023).
    paired: the batch is a pair (x0, x1) of fixed noise and data, e.g. from
      `genjax.flows.rectified.reflow_pairs` (rectified flow's reflow;
      `ot_coupling` is then ignored).
    num_classes: a class-conditional model v(x, t, c) (Zheng et al. 2023, "Guided
      flows"): batches are dicts {"x", "label"}; each label is replaced by the null
      label `num_classes` with probability `label_dropout` in the loss
      (`genjax.guidance.drop_labels`, Ho & Salimans 2021), so the same net also
      learns the unconditional field. The velocity of the affine Gaussian path is
      affine in the score at fixed (x, t), so classifier-free guidance mixes
      velocities (`genjax.guidance.guided`): v_w = (1 + w) v(x, t, c) - w v(x, t, null).

    loss: mean over the batch of the per-example loss (see `flow_matching_loss`).
    sample(params, key, num, method="adaptive", num_steps=None, labels=None,
      guidance=0.0, **kw) -> samples of shape (num, *data_shape), keywords of
      `ode.ode_sample` (which also returns the NFE; call it for the count).
      On a conditional model labels default to 0, 1, ..., K-1, 0, ... and guidance
      is the weight w (0 = plain conditional).
    log_prob(params, key, x, labels=None, **kw): the exact log-likelihood of the ODE
      model in nats (exact divergence by default; keywords of `ode.log_likelihood`), of
      the guided field with given labels (a density only at w = 0), else of the
      unconditional (null-label) field. x is an array (a dict batch is accepted).
    """
    data_shape = tuple(int(d) for d in data_shape)
    path = cond_ot_path() if path is None else path
    coupling = minibatch_ot_coupling if ot_coupling else None
    conditional = num_classes is not None
    if conditional and paired:
        raise ValueError("make_flow_matching_model: paired=True (reflow) is unconditional; "
                         f"got num_classes={num_classes!r}")
    guidance_lib.check_guidance(0.0, num_classes)  # validates num_classes
    null_label = num_classes

    def check(x, what="flow matching batch"):
        check_event_shape(f"{what} (data_shape={data_shape})", x, data_shape)

    pred_of = functools.partial(guidance_lib.network_prediction, net)

    def velocity_of(params, labels=None, guidance=0.0):
        """v(x, t): plain, or guided (Ho & Salimans 2021, eq. 6) on a conditional model."""
        guidance_lib.check_guidance(guidance, num_classes)
        pred = pred_of(params)
        if not conditional:
            return lambda x, t: pred(x, t, None)
        if labels is None:
            raise ValueError("a class-conditional velocity needs labels (the null label "
                             f"{null_label} gives the unconditional field)")
        return guidance_lib.guided(pred, labels, null_label, guidance)

    def data_of(batch):
        if paired:
            x0, x1 = batch
            check(x0, "flow matching noise x0")
            check(x1, "flow matching data x1")
            return x1, None
        x, labels = guidance_lib.split_batch(batch, conditional)
        check(x)
        return x, labels

    def init(key, batch):
        x, labels = data_of(batch)
        return net.init(key, x, jnp.zeros((x.shape[0],), x.dtype), labels)

    def loss(params, key, batch):
        x1, labels = data_of(batch)
        loss_key, drop_key, net_key = jax.random.split(key, 3)
        if conditional:
            labels = guidance_lib.drop_labels(drop_key, labels, null_label, label_dropout)
        pred = pred_of(params, net_key)
        v = lambda x, t: pred(x, t, labels)
        if paired:
            per_example = paired_flow_matching_loss(loss_key, path, v, batch[0], x1)
        else:
            per_example = flow_matching_loss(loss_key, path, v, x1, coupling)
        value = jnp.mean(per_example)
        return value, {"fm_loss": value}

    def sample(params, key, num, method="adaptive", num_steps=None, labels=None, guidance=0.0,
               **kwargs):
        if conditional and labels is None:
            labels = guidance_lib.cycled_labels(num, num_classes)
        x, _ = ode_sample(key, velocity_of(params, labels, guidance), (num,) + data_shape,
                          method=method, num_steps=num_steps, **kwargs)
        return x

    def log_prob(params, key, x, labels=None, guidance=0.0, **kwargs):
        if isinstance(x, dict):
            x = x["x"]
        check(x)
        if conditional and labels is None:
            labels = jnp.full((x.shape[0],), null_label, jnp.int32)
        logp, _ = log_likelihood(key, velocity_of(params, labels, guidance), x, **kwargs)
        return logp

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
