"""The diffusion Model bundle: every sampler on every parameterization, the exact
likelihood through the model's conversions, class conditioning and its errors.

The network is an oracle for Gaussian data x | c ~ N(m_c, s^2 I): its exact
E[eps | x_t] = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2), converted into the
prediction the model is built for, so every number has a closed form."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.diffusion import ddpm, losses, model as diffusion_model, parameterization, samplers
from genjax.diffusion import sde as sde_lib
from genjax.nn.mlp import TimeMLP

DATA_STD = 0.5
CLASS_MEANS = jnp.array([[-2.0, 0.0], [2.0, 1.0]])


class GaussianOracle(nn.Module):
    """Exact eps/x0/v prediction for N(m_label, DATA_STD^2 I); label None or the null
    label (2) means mean zero."""

    sde: sde_lib.SDE
    prediction: str

    @nn.compact
    def __call__(self, x, t, labels=None, train=False):
        self.param("unused", nn.initializers.zeros, (1,))
        alpha, sigma = self.sde.marginal_coeffs(t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        means = jnp.concatenate([CLASS_MEANS, jnp.zeros((1, 2))])
        m = jnp.zeros_like(x) if labels is None else means[labels]
        eps = sigma * (x - alpha * m) / (alpha**2 * DATA_STD**2 + sigma**2)
        return parameterization.convert(eps, x, alpha[:, 0], sigma[:, 0], source="eps",
                                        target=self.prediction)


def gaussian_log_prob(x, mean, std=DATA_STD):
    d = x.shape[-1]
    return -0.5 * jnp.sum((x - mean) ** 2, -1) / std**2 - d * jnp.log(std) - 0.5 * d * jnp.log(2 * jnp.pi)


SDES = {"vp": sde_lib.VPSDE(), "ddpm_cosine": ddpm.DiscreteVPSDE(ddpm.cosine_betas(100))}


def build(sde_name, prediction, num_classes=None, objective=None):
    sde = SDES[sde_name]
    objective = objective or ("dsm" if prediction == "eps" and sde_name == "vp" else "ddpm")
    return diffusion_model.make_diffusion_model(
        sde, GaussianOracle(sde, prediction), data_shape=(2,), objective=objective,
        prediction=prediction, num_classes=num_classes)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_log_prob_through_any_prediction_is_the_exact_density(prediction):
    model = build("vp", prediction)
    x = DATA_STD * jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    params = model.init(jax.random.PRNGKey(1), x)
    logp = model.log_prob(params, jax.random.PRNGKey(2), x, eps=1e-5, rtol=1e-6, atol=1e-6)
    # Residuals: the VP prior N(0, 1) vs the exact marginal at t=1 (variance differs
    # by ~exp(-10) ~ 5e-5) and the solver at tolerance 1e-6: well under 1e-3 nats.
    np.testing.assert_allclose(logp, gaussian_log_prob(x, 0.0), atol=1e-3)


# Step counts at which each solver's own error here is below 1% of the data std
# (EDM Heun at 20 steps is still 4-10% off on this problem: it spends steps at
# sigma ~ 150 and is only second order), so the test checks the model's plumbing.
SAMPLER_KWARGS = {
    "pc": dict(num_steps=200),
    "ode": dict(),
    "ddim": dict(num_steps=50),
    "dpm_solver": dict(num_steps=20, order=3),
    "edm_heun": dict(num_steps=60),
    "ancestral": dict(num_steps=100),
}


@pytest.mark.parametrize("method", sorted(SAMPLER_KWARGS))
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_every_sampler_on_a_ddpm_model_draws_the_data_distribution(method, prediction):
    model = build("ddpm_cosine", prediction)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)))
    x = model.sample(params, jax.random.PRNGKey(1), 4000, method=method, **SAMPLER_KWARGS[method])
    assert x.shape == (4000, 2)
    # Mean 0 and std DATA_STD: the standard errors at n=4000 are 0.008 and 0.006; the
    # samplers stop at t=1e-3 (noise std ~1e-3), far below the 0.04 allowed.
    np.testing.assert_allclose(np.mean(x, 0), 0.0, atol=0.04)
    np.testing.assert_allclose(np.std(x, 0), DATA_STD, atol=0.04)


def test_conditional_log_prob_and_guided_samples_follow_the_label():
    model = build("vp", "eps", num_classes=2)
    labels = jnp.array([0, 1] * 500)
    x = CLASS_MEANS[labels] + DATA_STD * jax.random.normal(jax.random.PRNGKey(0), (1000, 2))
    params = model.init(jax.random.PRNGKey(1), {"x": x[:4], "label": labels[:4]})
    # The exact marginal at t=1 replaces the N(0, I) prior (the means +-2 leave a
    # shift alpha(1) m ~ 0.013 there), so only the solver's error remains.
    alpha, sigma = SDES["vp"].marginal_coeffs(jnp.ones(()))
    std_1 = jnp.sqrt(alpha**2 * DATA_STD**2 + sigma**2)
    exact_prior = lambda z: gaussian_log_prob(z, alpha * CLASS_MEANS[labels[:64]], std_1)
    logp = model.log_prob(params, jax.random.PRNGKey(2), x[:64], labels=labels[:64],
                          rtol=1e-6, atol=1e-6, prior_log_prob=exact_prior)
    np.testing.assert_allclose(logp, gaussian_log_prob(x[:64], CLASS_MEANS[labels[:64]]), atol=1e-3)
    # The null label is the mean-zero Gaussian, so w moves the class mean to (1 + w) m_c
    # exactly (all components share the covariance): checks the guidance plumbing.
    w = 1.0
    samples = model.sample(params, jax.random.PRNGKey(3), 2000, method="dpm_solver",
                           num_steps=20, guidance=w)
    for c in range(2):
        mean = np.mean(np.asarray(samples)[np.arange(2000) % 2 == c], 0)
        np.testing.assert_allclose(mean, (1 + w) * np.asarray(CLASS_MEANS[c]), atol=0.06)


def test_loss_takes_labelled_batches_and_trains_a_conditional_mlp():
    net = TimeMLP(hidden=(16,), num_classes=3)
    model = diffusion_model.make_diffusion_model(
        sde_lib.VPSDE(), net, data_shape=(2,), num_classes=3, label_dropout=0.5)
    batch = {"x": jnp.ones((8, 2)), "label": jnp.arange(8) % 3}
    params = model.init(jax.random.PRNGKey(0), batch)
    value, _ = model.loss(params, jax.random.PRNGKey(1), batch)
    assert np.isfinite(value)
    with pytest.raises(ValueError, match="needs batches"):
        model.loss(params, jax.random.PRNGKey(1), batch["x"])


def test_network_outputs_of_the_wrong_shape_are_assertions_not_broadcasts():
    """An (N, 1) prediction for (N, 2) data would broadcast against the noise in the
    loss and into the reverse drift of every sampler; both stop when traced."""
    sde = SDES["vp"]
    column = lambda x, t: jnp.sum(x, axis=1, keepdims=True)
    with pytest.raises(AssertionError, match="eps_fn"):
        losses.dsm_loss(jax.random.PRNGKey(0), sde, column, jnp.zeros((4, 2)))
    with pytest.raises(AssertionError, match="score_fn"):
        samplers.pc_sample(jax.random.PRNGKey(0), sde, column, (4, 2), num_steps=2)
    with pytest.raises(AssertionError, match="score_fn"):
        samplers.ode_sample(jax.random.PRNGKey(0), sde, column, (4, 2), method="euler", num_steps=2)


def test_bad_choices_are_clear_errors():
    model = build("vp", "eps")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; expected one of \['ancestral', 'ddim', 'dpm_solver', 'edm_heun', 'ode', 'pc'\]"):
        model.sample(params, jax.random.PRNGKey(1), 4, method="dpm")
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        model.sample(params, jax.random.PRNGKey(1), 4, method="ddim", guidance=2.0)
    with pytest.raises(ValueError, match="unknown prediction 'score2'"):
        build("vp", "score2")
    with pytest.raises(ValueError, match="objective 'dsm' trains an eps prediction"):
        build("vp", "v", objective="dsm")
    with pytest.raises(ValueError, match="unknown objective 'elbo'"):
        build("vp", "eps", objective="elbo")
    with pytest.raises(ValueError, match=r"batch has shape \(4, 3\)"):
        model.log_prob(params, jax.random.PRNGKey(1), jnp.zeros((4, 3)))
