"""A GAN as a two-player `genjax.core.Model`.

Parameters are two groups, {"generator": ..., "critic": ...}; each has its own
loss, differentiated by the trainer with respect to that group only, and its own
optimizer. One train step is `update_schedule` = n_critic critic updates, then one
generator update (Gulrajani et al. 2017, Algorithm 1), each with its own key and
data batch. The EMA of the parameters is kept for the generator only
(`ema_groups`): an average of generator iterates (Yazici et al. 2019) is a better
sampler than the last iterate; an averaged critic has no use.

Losses (`genjax.gan.losses`), by name:

    "non_saturating"  Goodfellow et al. 2014: the discriminator's cross-entropy and
                      the generator's -log D(G(z))
    "hinge"           Lim & Ye 2017; Miyato et al. 2018, eqs. 16-17
    "wgan_gp"         Wasserstein critic with the gradient penalty
                      lambda E (||grad D(x_hat)|| - 1)^2 on interpolates
                      (Gulrajani et al. 2017, eq. 3; lambda = 10, n_critic = 5)

and, for any of them, the R1 penalty (gamma / 2) E ||grad D(x)||^2 on real data
(Mescheder et al. 2018, eq. 9) and spectral normalization of the critic's
weights (Miyato et al. 2018). Spectral normalization's power-iteration vectors
are the model state (`init_model_state`): every critic update advances them
(one power-iteration step per weight); the generator's update and sampling
read them. They are never differentiated or averaged.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.core import Model, check_int, unconditional_batch
from genjax.gan import losses as losses_lib

DEFAULT_N_CRITIC = {"wgan_gp": 5, "non_saturating": 1, "hinge": 1}
DEFAULT_GP_WEIGHT = {"wgan_gp": 10.0, "non_saturating": 0.0, "hinge": 0.0}


def _non_negative(name: str, value) -> float:
    v = float(value)
    if not v >= 0.0:
        raise ValueError(f"{name}={value!r}; expected a number >= 0")
    return v


def make_gan_model(
    generator: nn.Module,
    critic: nn.Module,
    *,
    data_shape: tuple,
    latent_dim: int,
    loss: str = "wgan_gp",
    gp_weight: float | None = None,
    r1_weight: float = 0.0,
    n_critic: int | None = None,
    spectral_norm: bool = False,
) -> Model:
    """GAN on data of `data_shape`: x = generator(z), z ~ N(0, I_latent_dim).

    generator.apply({"params": p}, z_NL) -> x (N, *data_shape);
    critic.apply({"params": p}, x, update_stats=...) -> scores (N,), examples
    treated independently (no batch statistics).
    loss: "wgan_gp", "non_saturating" or "hinge" (module docstring).
    gp_weight: lambda of the interpolate gradient penalty; None gives 10 for
        "wgan_gp" (Gulrajani et al. 2017) and 0 for the others (any loss accepts
        a positive value).
    r1_weight: gamma of the R1 penalty (gamma / 2) E ||grad D(x)||^2 on data.
    n_critic: critic updates per generator update; None gives 5 for "wgan_gp"
        and 1 for the others.
    spectral_norm: normalize the critic's weights by their spectral norm; the
        critic must have a `spectral_norm` field (genjax.gan.nets critics), which
        this sets, and the power-iteration vectors become the model state.

    Batches are arrays of data (N, *data_shape) (unconditional). sample(params,
    key, num, model_state=None) -> num generator samples; log_prob is None.
    """
    data_shape = tuple(data_shape)
    if loss not in losses_lib.LOSSES:
        raise ValueError(f"unknown GAN loss {loss!r}; expected one of {sorted(losses_lib.LOSSES)}")
    latent_dim = check_int("latent_dim", latent_dim, minimum=1)
    gp_weight = _non_negative("gp_weight", DEFAULT_GP_WEIGHT[loss] if gp_weight is None else gp_weight)
    r1_weight = _non_negative("r1_weight", r1_weight)
    n_critic = check_int("n_critic", DEFAULT_N_CRITIC[loss] if n_critic is None else n_critic, minimum=1)
    if spectral_norm:
        if not hasattr(critic, "spectral_norm"):
            raise ValueError(f"spectral_norm=True needs a critic with a `spectral_norm` field; "
                             f"{type(critic).__name__} has none")
        critic = critic.clone(spectral_norm=True)
    critic_objective, generator_objective = losses_lib.LOSSES[loss]

    def data_of(batch):
        return unconditional_batch("GAN", batch, data_shape)

    def latents(key, num):
        return jax.random.normal(key, (num, latent_dim))

    def generate(generator_params, z_NL):
        return generator.apply({"params": generator_params}, z_NL)

    def criticize(critic_params, model_state, x, update_stats: bool):
        """(scores_N, model_state); with update_stats, one power-iteration step
        per weight is taken and kept in the returned state."""
        if model_state is None:
            return critic.apply({"params": critic_params}, x), None
        variables = {"params": critic_params, **model_state}
        if not update_stats:
            return critic.apply(variables, x, update_stats=False), model_state
        scores, new_state = critic.apply(variables, x, update_stats=True, mutable=list(model_state))
        return scores, dict(new_state)

    def init(key, batch):
        x = data_of(batch)
        g_key, c_key = jax.random.split(key)
        generator_params = generator.init(g_key, latents(g_key, x.shape[0]))["params"]
        critic_params = critic.init(c_key, x)["params"]
        return {"generator": generator_params, "critic": critic_params}

    def init_model_state(key, batch):
        variables = critic.init(key, data_of(batch))
        return {name: value for name, value in variables.items() if name != "params"}

    def critic_loss(params, key, batch, model_state):
        x = data_of(batch)
        z_key, gp_key = jax.random.split(key)
        fake = jax.lax.stop_gradient(generate(params["generator"], latents(z_key, x.shape[0])))
        scores_N, model_state = criticize(params["critic"], model_state, jnp.concatenate([x, fake]), True)
        real_N, fake_N = scores_N[: x.shape[0]], scores_N[x.shape[0]:]
        value = critic_objective(real_N, fake_N)
        metrics = {"score_real": jnp.mean(real_N), "score_fake": jnp.mean(fake_N)}
        critic_fn = lambda y: criticize(params["critic"], model_state, y, False)[0]  # noqa: E731
        if gp_weight > 0:
            penalty = losses_lib.gradient_penalty(gp_key, critic_fn, x, fake)
            value = value + gp_weight * penalty
            metrics["gradient_penalty"] = penalty
        if r1_weight > 0:
            penalty = losses_lib.r1_penalty(critic_fn, x)
            value = value + 0.5 * r1_weight * penalty
            metrics["r1_penalty"] = penalty
        return value, (metrics, model_state)

    def generator_loss(params, key, batch, model_state):
        num = data_of(batch).shape[0]
        fake = generate(params["generator"], latents(key, num))
        fake_N, _ = criticize(params["critic"], model_state, fake, False)
        return generator_objective(fake_N), ({"score_fake": jnp.mean(fake_N)}, model_state)

    def stateless(loss_fn: Callable) -> Callable:
        def loss_without_state(params, key, batch):
            value, (metrics, _) = loss_fn(params, key, batch, None)
            return value, metrics

        return loss_without_state

    group_losses = {"critic": critic_loss, "generator": generator_loss}
    if not spectral_norm:
        group_losses = {name: stateless(fn) for name, fn in group_losses.items()}

    def sample(params, key, num, model_state=None):
        del model_state  # the generator has no state
        num = check_int("num", num, minimum=1)
        return generate(params["generator"], latents(key, num))

    return Model(
        init=init,
        loss=group_losses,
        sample=sample,
        log_prob=None,
        init_model_state=init_model_state if spectral_norm else None,
        update_schedule=(("critic", n_critic), ("generator", 1)),
        ema_groups=("generator",),
    )
