"""Samplers and likelihoods against a Gaussian mixture whose diffused score is
closed form: no training, so every error is the algorithm's own."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import metrics
from genjax.data import toy2d
from genjax.data.toy2d import exact_log_prob_fn, exact_score_fn
from genjax.diffusion import likelihood, samplers
from genjax.diffusion import sde as sde_lib

# Unequal weights (1..8)/36, so a sampler that ignored them would be caught.
MIXTURE = toy2d.gaussian_rings_mixture(num=8, radius=4.0, std=0.5)
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(), "ve": sde_lib.VESDE()}
NUM_SAMPLES = 20_000  # component-weight TV noise ~0.007 at this size, well under 0.02


def _exact_weights():
    w = np.asarray(MIXTURE.weights_K)
    return w / w.sum()


def _component_frequencies(x):
    labels = np.asarray(jnp.argmax(MIXTURE.responsibilities(x), axis=1))
    return np.bincount(labels, minlength=MIXTURE.num_components) / len(labels)


def _check_against_exact(x):
    """SWD within 1.5x of two exact sets of the same size; weights within 0.02 TV."""
    assert np.all(np.isfinite(np.asarray(x)))
    ref_a = MIXTURE.sample(jax.random.PRNGKey(101), NUM_SAMPLES)
    ref_b = MIXTURE.sample(jax.random.PRNGKey(102), NUM_SAMPLES)
    proj_key = jax.random.PRNGKey(5)
    floor = float(metrics.sliced_wasserstein(proj_key, ref_a, ref_b))
    swd = float(metrics.sliced_wasserstein(proj_key, x, ref_a))
    assert swd <= 1.5 * floor, (swd, floor)
    tv = float(metrics.total_variation(_component_frequencies(x), _exact_weights()))
    assert tv <= 0.02, tv


@pytest.mark.parametrize("name,predictor,corrector", [
    ("vp", "euler_maruyama", None),
    pytest.param("subvp", "euler_maruyama", "langevin", marks=pytest.mark.slow),  # ~13 s each:
    pytest.param("ve", "reverse_diffusion", "langevin", marks=pytest.mark.slow),     # vp runs always
])
def test_pc_sampler_reproduces_mixture(name, predictor, corrector):
    sde = SDES[name]
    score_fn = exact_score_fn(sde, MIXTURE)
    sample = jax.jit(lambda key: samplers.pc_sample(
        key, sde, score_fn, (NUM_SAMPLES, 2), num_steps=500,
        predictor=predictor, corrector=corrector, snr=0.16))
    _check_against_exact(sample(jax.random.PRNGKey(0)))


@pytest.mark.parametrize("name", ["vp", pytest.param("ve", marks=pytest.mark.slow)])
def test_ode_sampler_reproduces_mixture(name):
    sde = SDES[name]
    x, nfe = jax.jit(lambda key: samplers.ode_sample(key, sde, exact_score_fn(sde, MIXTURE), (NUM_SAMPLES, 2)))(
        jax.random.PRNGKey(1))
    _check_against_exact(x)
    assert int(nfe) > 0


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_exact_ode_log_likelihood_matches_analytic(name):
    sde = SDES[name]
    eps = 1e-5
    x = MIXTURE.sample(jax.random.PRNGKey(2), 500)
    # The exact marginal at t=1 as the prior isolates the ODE's error from the
    # (model-inherent) mismatch between p_1 and the SDE's Gaussian prior.
    logp, nfe = jax.jit(lambda x: likelihood.log_likelihood(
        jax.random.PRNGKey(0), sde, exact_score_fn(sde, MIXTURE), x, eps=eps,
        prior_log_prob=exact_log_prob_fn(sde, MIXTURE, sde.T)))(x)
    truth = exact_log_prob_fn(sde, MIXTURE, eps)(x)
    assert float(jnp.max(jnp.abs(logp - truth))) < 0.02
    # With the SDE's own prior only that mismatch is added; it is small on average.
    logp_prior, _ = jax.jit(lambda x: likelihood.log_likelihood(
        jax.random.PRNGKey(0), sde, exact_score_fn(sde, MIXTURE), x, eps=eps))(x)
    assert abs(float(jnp.mean(logp_prior - truth))) < 0.02


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_within_three_standard_errors(probe):
    sde = SDES["vp"]
    x = MIXTURE.sample(jax.random.PRNGKey(3), 1000)
    score_fn = exact_score_fn(sde, MIXTURE)
    exact, _ = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, score_fn, x)
    est, _ = likelihood.log_likelihood(jax.random.PRNGKey(4), sde, score_fn, x,
                                       exact_divergence=False, probe=probe)
    diff = np.asarray(est - exact)
    stderr = diff.std(ddof=1) / math.sqrt(len(diff))
    assert stderr > 0  # the estimator is random
    assert abs(diff.mean()) < 3 * stderr, (diff.mean(), stderr)


def test_x_init_is_used_and_shape_checked():
    sde = SDES["vp"]
    score_fn = exact_score_fn(sde, MIXTURE)
    x_init = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    a, _ = samplers.ode_sample(jax.random.PRNGKey(1), sde, score_fn, (16, 2), x_init=x_init)
    b, _ = samplers.ode_sample(jax.random.PRNGKey(2), sde, score_fn, (16, 2), x_init=x_init)
    np.testing.assert_allclose(a, b)  # deterministic given the same noise
    with pytest.raises(ValueError, match=r"x_init has shape \(8, 2\); expected \(16, 2\)"):
        samplers.pc_sample(jax.random.PRNGKey(1), sde, score_fn, (16, 2), x_init=x_init[:8])


def test_unknown_predictor_lists_valid_names():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="euler_maruyama"):
        samplers.pc_sample(jax.random.PRNGKey(0), sde, exact_score_fn(sde, MIXTURE), (4, 2), predictor="heun")
