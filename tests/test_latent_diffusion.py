"""Latent diffusion (genjax.diffusion.latent, experiments.latent_diffusion): the
bound's three terms against closed forms, the autoencoder-run checks, and a tiny
autoencoder + latent diffusion run through experiments.main."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import digits_latent_diffusion
from experiments import latent_diffusion, main
from experiments.configuration import ConfigError
from genjax.diffusion import latent as latent_lib
from genjax.diffusion import likelihood, sde as sde_lib
from genjax.vae import likelihood as vae_likelihood
from genjax.data import images as images_lib
from tests import test_vae


# ----------------------------------------------------------------------------- the bound's terms

def test_entropy_of_a_diagonal_gaussian_is_the_closed_form():
    log_std = jnp.array([[0.3, -1.2, 0.0], [2.0, -0.5, 0.1]])
    want = [stats.multivariate_normal(mean=np.zeros(3), cov=np.diag(np.exp(2 * np.asarray(ls)))).entropy()
            for ls in log_std]
    np.testing.assert_allclose(latent_lib.diagonal_gaussian_entropy(log_std), want, rtol=1e-5)


def _gaussian_score(sde, s):
    """The exact score of the VP marginal of data N(0, s^2 I): x_t ~ N(0, alpha^2 s^2 + sigma^2)."""
    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        var = (alpha**2 * s**2 + sigma**2)[:, None]
        return -x / var
    return score


def test_ode_log_density_with_the_exact_score_of_a_gaussian_is_its_log_density():
    # Song et al. 2021, App. D.2: with the exact score the probability-flow ODE is the
    # exact transport of N(0, s^2 I) to its marginal at T (used as the prior here)
    sde, s = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0), 0.4
    alpha_T, sigma_T = sde.marginal_coeffs(jnp.ones(()))
    var_T = float(alpha_T**2 * s**2 + sigma_T**2)
    prior = lambda z: jnp.sum(stats_norm_logpdf(z, var_T), axis=-1)
    x = jnp.array([[0.1, -0.3], [0.5, 0.2], [-0.7, 0.0]])
    logp, _ = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, _gaussian_score(sde, s), x,
                                        rtol=1e-6, atol=1e-6, eps=1e-5, prior_log_prob=prior)
    want = stats.multivariate_normal(mean=np.zeros(2), cov=s**2 * np.eye(2)).logpdf(np.asarray(x))
    np.testing.assert_allclose(logp, want, atol=2e-3)


def stats_norm_logpdf(z, var):
    return -0.5 * z**2 / var - 0.5 * math.log(2 * math.pi * var)


def test_bound_of_a_linear_gaussian_model_is_log_p_x_with_the_ode_prior():
    # p(z) = N(0, s^2 I), p(x|z) = N(x; z, tau^2 I): p(x) = N(0, (s^2 + tau^2) I), and
    # with the exact posterior as q the ELBO equals log p(x) (Kingma & Welling 2014, eq. 3)
    s, tau, dim = 0.6, 0.5, 2
    x = jnp.array([[0.3, -0.8], [1.1, 0.4]])
    post_var = s**2 * tau**2 / (s**2 + tau**2)
    encode = lambda y: (y * s**2 / (s**2 + tau**2), jnp.full_like(y, 0.5 * math.log(post_var)))
    log_lik = lambda z: jnp.sum(stats_norm_logpdf(x - z, tau**2), axis=-1)
    closed_prior = lambda key, z: jnp.sum(stats_norm_logpdf(z, s**2), axis=-1)
    log_px = stats.multivariate_normal(mean=np.zeros(dim), cov=(s**2 + tau**2) * np.eye(dim)).logpdf(np.asarray(x))

    many = latent_lib.latent_elbo_terms(jax.random.PRNGKey(1), encode, log_lik, closed_prior, x, num_samples=4000)
    np.testing.assert_allclose(many["bound"], log_px, atol=0.08)  # Monte Carlo: std ~ 1/sqrt(4000)
    mean, log_std = encode(x)
    var = jnp.exp(2 * log_std)
    want_rec = jnp.sum(stats_norm_logpdf(x - mean, tau**2) - 0.5 * var / tau**2, axis=-1)
    want_prior = jnp.sum(stats_norm_logpdf(mean, s**2) - 0.5 * var / s**2, axis=-1)
    np.testing.assert_allclose(many["reconstruction"], want_rec, atol=0.08)
    np.testing.assert_allclose(many["prior"], want_prior, atol=0.08)

    # the ODE density of the same prior, through the same draws of z: equal up to the solver
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0)
    alpha_T, sigma_T = sde.marginal_coeffs(jnp.ones(()))
    var_T = float(alpha_T**2 * s**2 + sigma_T**2)
    ode_prior = lambda key, z: likelihood.log_likelihood(
        key, sde, _gaussian_score(sde, s), z, rtol=1e-6, atol=1e-6, eps=1e-5,
        prior_log_prob=lambda u: jnp.sum(stats_norm_logpdf(u, var_T), axis=-1))[0]
    key = jax.random.PRNGKey(2)
    exact = latent_lib.latent_elbo_terms(key, encode, log_lik, closed_prior, x, num_samples=3)
    ode = latent_lib.latent_elbo_terms(key, encode, log_lik, ode_prior, x, num_samples=3)
    np.testing.assert_allclose(ode["prior"], exact["prior"], atol=5e-3)
    np.testing.assert_allclose(ode["bound"], exact["bound"], atol=5e-3)


def test_latent_model_rescales_the_prior_and_returns_a_density_of_cells():
    # a prior N(u; 0, I) on u = z / scale is N(z; 0, scale^2 I) on z (change of variables)
    from genjax.core import Model
    from genjax.vae import model as vae_lib
    from genjax.vae import nets as vae_nets

    vae = vae_lib.VAE(encoder=vae_nets.GaussianEncoder(latent_dim=3, channels=(4,), hidden=8),
                      decoder=vae_nets.LatentDecoder(image_shape=(8, 8, 1), num_levels=17, channels=(4,), hidden=8),
                      data_shape=(8, 8, 1), num_levels=17, latent_dim=3)
    y = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1), minval=-1, maxval=1)
    vae_params = vae_lib.make_vae_model(vae).init(jax.random.PRNGKey(1), y)
    scale = 2.5
    prior = Model(init=None, loss=None, sample=lambda p, k, n: jnp.zeros((n, 3)),
                  log_prob=lambda p, k, u: jnp.sum(stats_norm_logpdf(u, 1.0), axis=-1))
    terms_fn = latent_lib.make_bound_terms_fn(prior, vae, vae_params, scale=scale)
    terms = terms_fn(None, jax.random.PRNGKey(3), y, num_latent_samples=4000)
    mean, log_std = vae_lib.encode(vae, vae_params, y)
    want_prior = jnp.sum(stats_norm_logpdf(mean, scale**2) - 0.5 * jnp.exp(2 * log_std) / scale**2, axis=-1)
    np.testing.assert_allclose(terms["prior"], want_prior, atol=0.05)
    model = latent_lib.make_latent_diffusion_model(prior, vae, vae_params, scale=scale)
    logp = model.log_prob(None, jax.random.PRNGKey(3), y, num_latent_samples=4000)
    np.testing.assert_allclose(logp, terms["bound"] - images_lib.log_cell_volume((8, 8, 1), 17), rtol=1e-6)
    images = model.sample(None, jax.random.PRNGKey(4), 5)
    assert images.shape == (5, 8, 8, 1)
    with pytest.raises(ValueError, match="decode"):
        model.sample(None, jax.random.PRNGKey(4), 5, decode="mean")


# ----------------------------------------------------------------------------- bad autoencoder runs

def _ldm_config(ae_workdir, latent_dim=4):
    c = digits_latent_diffusion.get_config()
    c.model.autoencoder_workdir = ae_workdir
    c.model.latent_dim = latent_dim
    c.model.hidden = (16, 16)
    c.optim.warmup_steps = 0
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.sample.num = 8
    c.sample.num_steps = 4
    c.eval.num = 4
    c.eval.rtol = 1e-3
    c.eval.atol = 1e-3
    return c


def _write_run(workdir, family="vae", latent_dim=4, num_steps=20, steps=()):
    os.makedirs(workdir)
    config = test_vae.tiny_config().to_dict() if family == "vae" else {"family": family, "model": {},
                                                                          "data": {"name": "digits"}}
    config = json.loads(json.dumps(config, default=list))
    config["family"] = family
    config["model"]["latent_dim"] = latent_dim
    config.setdefault("train", {})["num_steps"] = num_steps
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    for step in steps:
        os.makedirs(os.path.join(workdir, "checkpoints", str(step)))


@pytest.mark.parametrize("case, message", [
    ("missing", r"'.*nowhere' does not exist; expected the workdir of a finished 'vae' run .*latent_dim=4"),
    ("empty", r"holds no run \(no config.json\); expected .*'vae'"),
    ("family", r"holds a 'score_sde' run; expected the workdir of a finished 'vae' run"),
    ("latent", r"model.latent_dim=8, but this config's model.latent_dim=4"),
    ("unfinished", r"holds no finished run: its newest checkpoint is at step 10 of train.num_steps=20"),
    ("untrained", r"holds no finished run: it has no checkpoint"),
])
def test_a_bad_autoencoder_workdir_names_the_path_and_what_was_expected(tmp_path, case, message):
    wd = str(tmp_path / ("nowhere" if case == "missing" else "ae"))
    if case == "empty":
        os.makedirs(wd)
    elif case == "family":
        _write_run(wd, family="score_sde", steps=(20,))
    elif case == "latent":
        _write_run(wd, latent_dim=8, steps=(20,))
    elif case == "unfinished":
        _write_run(wd, steps=(10,))
    elif case == "untrained":
        _write_run(wd)
    with pytest.raises(ConfigError, match=message) as err:
        latent_diffusion.autoencoder_config(_ldm_config(wd))
    assert wd in str(err.value)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow  # trains an autoencoder and a latent diffusion model through experiments.main (~40 s)
def test_tiny_latent_diffusion_run_trains_on_latents_and_samples_images(tmp_path):
    ae_wd, wd = str(tmp_path / "ae"), str(tmp_path / "ldm")
    main.train(test_vae.tiny_config(), ae_wd, progress=False)
    config = _ldm_config(ae_wd)
    state = main.train(config, wd, progress=False)
    assert int(state.step) == 20
    samples = main.sample(config, wd, verbose=False)
    assert samples.shape == (8, 8, 8, 1)
    # decoded to the most probable level: cell centres of the 17 levels (up to one ulp)
    centres = images_lib.level_centres(vae_likelihood.levels_of(samples, 17), 17)
    np.testing.assert_allclose(np.asarray(centres), samples, rtol=0, atol=1e-6)
    result = main.evaluate(config, wd, samples=samples, verbose=False)
    assert result["bound_terms"]["bound_nats"] == pytest.approx(-result["nll_nats"], abs=1e-2)
    assert 0 < result["nll_nats"]
    assert result["autoencoder_floor"]["num_images"] == 447
    assert "frechet_distance" in result and "class_accuracy" in result
