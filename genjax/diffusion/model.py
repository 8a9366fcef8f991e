"""A diffusion model as a `genjax.core.Model`: one network, any SDE, any sampler.

The network `net.apply(params, x, t, labels, train=..., rngs=...)` predicts one of
eps, x0, v (`prediction`); every sampler reads it through
`parameterization.convert_fn` as a score, so DDPM-trained and score-SDE-trained
models share all samplers and the likelihood. Two training objectives:

    "dsm"   continuous-time denoising score matching with eps prediction
            (Song et al. 2021, eq. 7), optionally likelihood-weighted with
            importance-sampled times (Song et al. 2021b, "Maximum likelihood
            training of score-based diffusion models", eq. 7 and sec. 5.1)
    "ddpm"  Ho et al. 2020's L_simple on the discrete grid t = i/N (eq. 14), for
            eps, x0 or v prediction (Salimans & Ho 2022, sec. 4)

Class-conditional models (num_classes set) drop labels with probability
`label_dropout` during training and sample with classifier-free guidance
(Ho & Salimans 2021) through `genjax.guidance`.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax import guidance as guidance_lib
from genjax.core import Model, check_shape
from genjax.diffusion import ddpm, likelihood, losses, samplers
from genjax.diffusion.parameterization import PARAMETERIZATIONS, convert_fn
from genjax.diffusion.sde import SDE

OBJECTIVES = ("dsm", "ddpm")


def _probability_flow_sample(key, sde: SDE, score_fn: Callable, shape, **kwargs):
    """`samplers.ode_sample` without its count of score evaluations."""
    x, _ = samplers.ode_sample(key, sde, score_fn, shape, **kwargs)
    return x


# Every entry returns the samples only (the `Model.sample` protocol).
SAMPLERS: dict[str, Callable] = {
    "pc": samplers.pc_sample,
    "ode": _probability_flow_sample,
    "ddim": samplers.ddim_sample,
    "dpm_solver": samplers.dpm_solver_sample,
    "edm_heun": samplers.edm_heun_sample,
    "ancestral": ddpm.ancestral_sample,
}


def _check_choice(kind, value, valid):
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {sorted(valid)}")



def make_score_fn(sde: SDE, net: nn.Module, *, prediction: str, num_classes: int | None = None):
    """score_fn_of(params, labels=None, guidance=0.0) -> score_fn(x, t): the network's
    `prediction` read as a score, guided (Ho & Salimans 2021) on a conditional net.
    What every sampler and the likelihood of `make_diffusion_model` call."""
    _check_choice("prediction", prediction, PARAMETERIZATIONS)

    def score_fn_of(params, labels=None, guidance=0.0):
        guidance_lib.check_guidance(guidance, num_classes)
        pred = guidance_lib.network_prediction(net, params)
        if num_classes is not None:
            fn = guidance_lib.guided(pred, labels, num_classes, guidance)
        else:
            fn = lambda x, t: pred(x, t, None)
        return convert_fn(sde, fn, source=prediction, target="score")

    return score_fn_of


def make_diffusion_model(
    sde: SDE,
    net: nn.Module,
    *,
    data_shape: tuple,
    objective: str = "dsm",
    prediction: str = "eps",
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    train_eps: float = 1e-5,
    num_classes: int | None = None,
    label_dropout: float = 0.1,
) -> Model:
    """Diffusion model on data of `data_shape` (see the module docstring).

    sample(params, key, num, method="pc", labels=None, guidance=0.0, **kwargs) ->
    samples of shape (num, *data_shape): any sampler in SAMPLERS with its own
    keywords. The NFE of the adaptive "ode" sampler comes from `samplers.ode_sample`
    on `make_score_fn`'s score (the others' is a function of num_steps).
    labels default to 0, 1, ..., K-1, 0, ... on a conditional model; guidance is
    the weight w of classifier-free guidance (0 = plain conditional).
    log_prob(params, key, x, labels=None, **kwargs): probability-flow ODE
    log-likelihood in nats (`likelihood.log_likelihood` keywords; exact divergence
    by default, exact_divergence=False for Hutchinson), of p(x | labels) when
    labels are given and of the unconditional (null-label) model otherwise.
    """
    data_shape = tuple(data_shape)
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("prediction", prediction, PARAMETERIZATIONS)
    if objective == "dsm" and prediction != "eps":
        raise ValueError(f"objective 'dsm' trains an eps prediction; got prediction={prediction!r}")
    conditional = num_classes is not None
    null_label = num_classes

    pred_fn_of = functools.partial(guidance_lib.network_prediction, net)
    score_fn_of = make_score_fn(sde, net, prediction=prediction, num_classes=num_classes)

    def init(key, batch):
        x, labels = guidance_lib.split_batch(batch, conditional)
        check_shape("batch", x, (None,) + data_shape)
        return net.init(key, x, jnp.zeros((x.shape[0],), x.dtype), labels)

    def loss(params, key, batch):
        x, labels = guidance_lib.split_batch(batch, conditional)
        check_shape("batch", x, (None,) + data_shape)
        loss_key, drop_key, net_key = jax.random.split(key, 3)
        if conditional:
            labels = guidance_lib.drop_labels(drop_key, labels, null_label, label_dropout)
        pred = pred_fn_of(params, net_key)
        fn = lambda x_t, t: pred(x_t, t, labels)
        if objective == "dsm":
            per_example, _ = losses.dsm_loss(
                loss_key, sde, fn, x, likelihood_weighting=likelihood_weighting,
                importance_sampling=importance_sampling, eps=train_eps)
        else:
            per_example, _ = ddpm.ddpm_loss(
                loss_key, sde, fn, x, prediction=prediction, num_timesteps=sde.num_timesteps)
        value = jnp.mean(per_example)
        return value, {"loss": value}

    def default_labels(num):
        return guidance_lib.cycled_labels(num, num_classes) if conditional else None

    def sample(params, key, num, method="pc", labels=None, guidance=0.0, **kwargs):
        _check_choice("sampler", method, SAMPLERS)
        labels = default_labels(num) if labels is None else labels
        score_fn = score_fn_of(params, labels, guidance)
        return SAMPLERS[method](key, sde, score_fn, (num,) + data_shape, **kwargs)

    def log_prob(params, key, x, labels=None, **kwargs):
        check_shape("batch", x, (None,) + data_shape)
        if conditional and labels is None:
            labels = jnp.full((x.shape[0],), null_label, jnp.int32)
        logp, _ = likelihood.log_likelihood(key, sde, score_fn_of(params, labels), x, **kwargs)
        return logp

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)


def make_score_model(sde: SDE, net: nn.Module, *, data_shape: tuple, **kwargs) -> Model:
    """The score-SDE model: `make_diffusion_model` with objective="dsm" (eps prediction)."""
    return make_diffusion_model(sde, net, data_shape=data_shape, objective="dsm", **kwargs)
