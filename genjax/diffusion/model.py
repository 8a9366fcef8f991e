"""A score-based diffusion model as a `genjax.core.Model`."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.core import Model, check_shape
from genjax.diffusion import likelihood, losses, samplers
from genjax.diffusion.parameterization import score_from_eps
from genjax.diffusion.sde import SDE


def make_score_model(
    sde: SDE,
    net: nn.Module,
    *,
    data_shape: tuple,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    train_eps: float = 1e-5,
) -> Model:
    """Score model whose `net(x, t)` predicts the noise eps (see `losses`).

    sample(params, key, num, method="pc"|"ode", **sampler_kwargs) draws samples
    (pc: `samplers.pc_sample` keywords; ode: `samplers.ode_sample` keywords and it
    also returns the NFE). log_prob(params, key, x, **likelihood_kwargs) is the
    exact probability-flow ODE log-likelihood log p_eps(x) in nats (exact
    divergence by default; pass exact_divergence=False for Hutchinson).
    """
    data_shape = tuple(data_shape)

    def score_fn_of(params):
        eps_fn = lambda x, t: net.apply(params, x, t)
        return score_from_eps(sde, eps_fn)

    def init(key, x):
        check_shape("batch", x, (None,) + data_shape)
        return net.init(key, x, jnp.zeros((x.shape[0],), x.dtype))

    def loss(params, key, x):
        check_shape("batch", x, (None,) + data_shape)
        eps_fn = lambda x_t, t: net.apply(params, x_t, t)
        per_example, _ = losses.dsm_loss(
            key, sde, eps_fn, x, likelihood_weighting=likelihood_weighting,
            importance_sampling=importance_sampling, eps=train_eps
        )
        value = jnp.mean(per_example)
        return value, {"loss": value}

    def sample(params, key, num, method="pc", **kwargs):
        shape = (num,) + data_shape
        if method == "pc":
            return samplers.pc_sample(key, sde, score_fn_of(params), shape, **kwargs)
        if method == "ode":
            return samplers.ode_sample(key, sde, score_fn_of(params), shape, **kwargs)
        raise ValueError(f"unknown sampling method {method!r}; expected 'pc' or 'ode'")

    def log_prob(params, key, x, **kwargs):
        check_shape("batch", x, (None,) + data_shape)
        logp, _ = likelihood.log_likelihood(key, sde, score_fn_of(params), x, **kwargs)
        return logp

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
