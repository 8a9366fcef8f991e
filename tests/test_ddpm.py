"""Discrete-time DDPM as an SDE: schedules against their formulas, the SDE against
the chain it encodes, L_simple against Gaussian closed forms, and every sampler
against a Gaussian mixture whose diffused score is exact (no training involved)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import metrics
from genjax.data import toy2d
from genjax.data.toy2d import exact_log_prob_fn, exact_score_fn
from genjax.diffusion import ddpm, likelihood, samplers, solvers
from genjax.diffusion import sde as sde_lib
from genjax.diffusion.parameterization import convert_fn

N_STEPS = 1000
SDES = {name: ddpm.DiscreteVPSDE(ddpm.make_schedule(name, N_STEPS)) for name in ddpm.SCHEDULES}
# Unequal weights (1..8)/36, so a sampler that ignored them would be caught.
MIXTURE = toy2d.gaussian_rings_mixture(num=8, radius=4.0, std=0.5)
NUM_SAMPLES = 6000  # component-weight TV noise ~0.014 at this size (sum_k sqrt(w_k / n) sqrt(2/pi) / 2)


def _float32_log_abar(sde, i):
    return np.asarray(sde.log_alpha_bar(jnp.asarray(i / sde.num_timesteps, jnp.float32)), np.float64)


# ---- schedules and the SDE ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_bar_on_the_grid_is_the_cumulative_product(name):
    sde = SDES[name]
    i = np.arange(N_STEPS + 1)
    expected = np.concatenate([[1.0], np.cumprod(1.0 - np.asarray(sde.betas))])
    alpha, sigma = sde.marginal_coeffs(jnp.asarray(i / N_STEPS, jnp.float32))
    # float32 tables: log abar (down to -20 for cosine) carries ~1e-6 relative error.
    np.testing.assert_allclose(np.asarray(alpha, np.float64) ** 2, expected, rtol=5e-6, atol=0)
    np.testing.assert_allclose(np.asarray(sigma) ** 2, 1.0 - expected, rtol=5e-6, atol=1e-7)
    np.testing.assert_allclose(sde.alphas_cumprod, expected[1:], rtol=1e-12)


def test_linear_schedule_approaches_the_continuous_vp_sde():
    """log abar_i = sum_j log(1 - beta_j) vs the VP SDE's -int_0^{t_i} beta(s) ds with
    beta(s) = 0.1 + 19.9 s, i.e. N beta_j = beta((j - 1) / (N - 1)). The two differ by
      second order: -log(1 - b) - b in [0, b^2 / (2 (1 - b))] per step, and
      the grid:     sum_{j<=i} beta_j - int_0^{t_i} beta = 19.9 i (i - N) / (2 N^2 (N - 1)),
    plus, between grid points, the linear interpolation of the concave quadratic
    (at most 19.9 / (8 N^2)). Float32 tables add 1e-5 at most."""
    sde, vp = SDES["linear"], sde_lib.VPSDE(0.1, 20.0)
    betas = np.asarray(sde.betas)
    i = np.arange(N_STEPS + 1)
    second = np.concatenate([[0.0], np.cumsum(betas**2 / (2.0 * (1.0 - betas)))])
    grid = 19.9 * i * (N_STEPS - i) / (2.0 * N_STEPS**2 * (N_STEPS - 1))
    bound = second + grid + 19.9 / (8.0 * N_STEPS**2) + 1e-5
    continuous = -(0.1 * i / N_STEPS + 9.95 * (i / N_STEPS) ** 2)
    assert np.all(np.abs(_float32_log_abar(sde, i) - continuous) <= bound)
    # Off the grid, against the bound at the enclosing grid points.
    t = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (500,)), np.float64)
    gap = np.abs(np.asarray(sde.log_alpha_bar(jnp.asarray(t, jnp.float32))) - 2.0 * np.asarray(vp.log_alpha(t)))
    assert np.all(gap <= np.maximum(bound[np.floor(t * N_STEPS).astype(int)], bound[np.ceil(t * N_STEPS).astype(int)]))
    # The whole bound is 0.07 at t = 1: alpha = sqrt(abar) agrees to 3.5% relative.
    assert bound.max() < 0.07
    t_dense = jnp.linspace(0.0, 1.0, 4001)
    np.testing.assert_array_less(
        np.abs(np.asarray(sde.marginal_coeffs(t_dense)[0]) / np.asarray(vp.marginal_coeffs(t_dense)[0]) - 1.0), 0.035)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sde_coefficients_match_the_marginals(name):
    """d log alpha / dt = -beta(t) / 2 inside every interval (a central difference is
    exact for the linear log abar; h = 0.45 / N keeps both points in the interval), and
    the drift and diffusion are -beta x / 2 and sqrt(beta) with beta = -N log(1 - beta_i)."""
    sde = SDES[name]
    i = np.arange(1, N_STEPS + 1)
    mid = jnp.asarray((i - 0.5) / N_STEPS, jnp.float32)
    h = 0.45 / N_STEPS
    log_alpha = lambda t: jnp.log(sde.marginal_coeffs(t)[0])
    slope = (log_alpha(mid + h) - log_alpha(mid - h)) / (2 * h)
    x = jnp.ones((N_STEPS, 3))
    drift, diffusion = sde.sde(x, mid)
    rate = -N_STEPS * np.log1p(-np.asarray(sde.betas))
    np.testing.assert_allclose(np.asarray(diffusion) ** 2, rate, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(drift), -0.5 * rate[:, None] * np.ones((1, 3)), rtol=1e-5)
    # float32: log alpha (up to 10 in size) has round-off 1e-6, over differences 0.45 beta_i / N.
    np.testing.assert_allclose(np.asarray(slope), -0.5 * np.asarray(diffusion) ** 2, rtol=2e-3, atol=2e-3)
    # At a grid point t_i, beta(t) is the interval (t_{i-1}, t_i] that a reverse step crosses.
    np.testing.assert_allclose(np.asarray(sde.beta(jnp.asarray(i / N_STEPS, jnp.float32))), rate, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_discretize_is_the_ddpm_chain_on_the_grid(name):
    """x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z: f = (sqrt(1 - beta_i) - 1) x,
    G = sqrt(beta_i), Langevin alpha_i = 1 - beta_i. Float32 times t and t - dt sit up
    to 2 ulp(1) = 1.2e-4 grid steps off the grid each, which moves log(1 - beta_i) by
    that fraction of itself (up to |log 0.001| = 6.9 for cosine's clipped last step);
    the float32 tables add ~4e-6."""
    sde = SDES[name]
    i = np.arange(1, N_STEPS + 1)
    t = jnp.asarray(i / N_STEPS, jnp.float32)
    dt = jnp.full_like(t, 1.0 / N_STEPS)
    x = jnp.ones((N_STEPS, 2))
    f, g = sde.discretize(x, t, dt)
    log_keep = np.log1p(-np.asarray(sde.betas))
    tol = 2.5e-4 * np.abs(log_keep) + 5e-6
    assert np.all(np.abs(np.log1p(-np.asarray(g, np.float64) ** 2) - log_keep) <= tol)
    assert np.all(np.abs(np.log(np.asarray(sde.langevin_alpha(t, dt), np.float64)) - log_keep) <= tol)
    np.testing.assert_allclose(f[:, 0], jnp.sqrt(1.0 - g**2) - 1.0, rtol=1e-5, atol=1e-7)


def test_cosine_alpha_bar_matches_the_closed_form():
    sde = SDES["cosine"]
    betas = np.asarray(sde.betas)
    clipped = betas >= 0.999
    # abar(1) = 0, so the last step is clipped; nothing else is at N = 1000.
    assert clipped[-1] and not clipped[:-1].any()
    i = np.arange(N_STEPS)  # abar_0..abar_{N-1}: untouched by the clipping
    s = 0.008
    closed = np.cos((i / N_STEPS + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(np.exp(_float32_log_abar(sde, i)), closed, rtol=5e-6)
    np.testing.assert_allclose(ddpm.cosine_alpha_bar(i / N_STEPS), closed, rtol=1e-12)
    np.testing.assert_allclose(sde.alphas_cumprod[-1], closed[-1] * 0.001, rtol=1e-9)


def test_sde_is_a_hashable_static_argument():
    a = ddpm.DiscreteVPSDE(ddpm.linear_betas(10))
    b = ddpm.DiscreteVPSDE(list(ddpm.linear_betas(10)))
    assert a == b and hash(a) == hash(b) and a != ddpm.DiscreteVPSDE(ddpm.cosine_betas(10))
    assert a.num_timesteps == 10 and a.T == 1.0 and a.prior_std() == 1.0
    f = jax.jit(lambda sde, t: sde.marginal_coeffs(t)[0], static_argnums=0)
    np.testing.assert_allclose(f(a, 0.3), a.marginal_coeffs(0.3)[0])
    np.testing.assert_allclose(f(b, 0.3), f(a, 0.3))


def test_schedules_check_their_arguments():
    with pytest.raises(ValueError, match=r"unknown beta schedule 'quadratic'; expected one of \['cosine', 'linear'\]"):
        ddpm.make_schedule("quadratic", 10)
    with pytest.raises(ValueError, match=r"num_timesteps must be a Python int >= 1, got 0"):
        ddpm.linear_betas(0)
    with pytest.raises(ValueError, match=r"beta_start <= beta_end"):
        ddpm.linear_betas(10, 0.1, 0.01)
    with pytest.raises(ValueError, match=r"every beta must lie in \(0, 1\)"):
        ddpm.DiscreteVPSDE([0.1, 1.0])
    with pytest.raises(ValueError, match=r"max_beta must lie in \(0, 1\)"):
        ddpm.cosine_betas(10, max_beta=1.0)


# ---- the loss ---------------------------------------------------------------------------------


def _gaussian_oracle(sde, s, prediction):
    """E[target | x_t] for x0 ~ N(0, s^2 I): x_t ~ N(0, (alpha^2 s^2 + sigma^2) I),
    and target = a x0 + b eps has Cov(target, x_t) = a alpha s^2 + b sigma."""

    def coeffs(t):
        alpha, sigma = sde.marginal_coeffs(t)
        a, b = {"eps": (0.0, 1.0), "x0": (1.0, 0.0), "v": (-sigma, alpha)}[prediction]
        var_x = alpha**2 * s**2 + sigma**2
        cov = a * alpha * s**2 + b * sigma
        return cov / var_x, a**2 * s**2 + b**2 - cov**2 / var_x

    def pred_fn(x, t):
        return coeffs(t)[0][:, None] * x

    return pred_fn, lambda t: coeffs(t)[1]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_of_the_bayes_optimal_prediction_is_the_posterior_variance(prediction):
    """For Gaussian data E[target | x_t] is linear in x_t and the residual is Gaussian
    with the posterior variance V(t) in each dimension, so loss / V(t) is chi^2_D / D:
    mean 1, std sqrt(2 / D) per example. Over B examples the mean lies within 5
    standard errors, 5 sqrt(2 / (D B)) = 0.025, unless x_t or the target is wrong."""
    sde, s, d, batch = SDES["linear"], 0.7, 4, 20_000
    pred_fn, posterior_var = _gaussian_oracle(sde, s, prediction)
    x0 = s * jax.random.normal(jax.random.PRNGKey(0), (batch, d))
    loss, t = jax.jit(lambda key, x0: ddpm.ddpm_loss(key, sde, pred_fn, x0, prediction=prediction))(
        jax.random.PRNGKey(1), x0)
    assert loss.shape == (batch,) and t.shape == (batch,)
    ratio = np.asarray(loss / posterior_var(t))
    assert abs(ratio.mean() - 1.0) < 5 * math.sqrt(2.0 / (d * batch)), ratio.mean()


def test_loss_times_are_uniform_on_the_grid():
    sde, n, batch = ddpm.DiscreteVPSDE(ddpm.linear_betas(4)), 4, 4000
    _, t = jax.jit(lambda key: ddpm.ddpm_loss(key, sde, lambda x, t: x, jnp.zeros((batch, 2))))(jax.random.PRNGKey(2))
    steps = np.asarray(t) * n
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)
    counts = np.bincount(np.round(steps).astype(int), minlength=n + 1)
    assert counts[0] == 0 and counts.sum() == batch
    # Each of 1..4 has Binomial(4000, 1/4) counts: mean 1000, std 27; 5 std = 137.
    assert np.all(np.abs(counts[1:] - batch / n) < 5 * math.sqrt(batch * 0.25 * 0.75))


def test_losses_of_the_three_predictions_relate_by_snr():
    """For one network and the same draws, x0 = (x - sigma eps) / alpha gives x0 errors
    -sigma / alpha times the eps errors, and on a VP SDE v = (eps - sigma x) / alpha
    gives v errors 1 / alpha times them (Salimans & Ho 2022, sec. 4)."""
    sde = SDES["cosine"]
    eps_fn = lambda x, t: jnp.tanh(x) * t[:, None] + 0.3
    x0 = MIXTURE.sample(jax.random.PRNGKey(3), 256)
    key = jax.random.PRNGKey(4)
    loss_fn = jax.jit(lambda pred_fn, prediction: ddpm.ddpm_loss(key, sde, pred_fn, x0, prediction=prediction),
                      static_argnums=(0, 1))
    loss_eps, t = loss_fn(eps_fn, "eps")
    alpha, sigma = sde.marginal_coeffs(t)
    for target, weight in (("x0", (sigma / alpha) ** 2), ("v", 1.0 / alpha**2)):
        loss, t2 = loss_fn(convert_fn(sde, eps_fn, source="eps", target=target), target)
        np.testing.assert_array_equal(t2, t)
        np.testing.assert_allclose(loss, weight * loss_eps, rtol=1e-3)


def test_loss_checks_its_arguments():
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"unknown prediction 'score'; expected one of \('eps', 'x0', 'v'\)"):
        ddpm.ddpm_loss(jax.random.PRNGKey(0), SDES["linear"], lambda x, t: x, x0, prediction="score")
    with pytest.raises(ValueError, match="num_timesteps must be given"):
        ddpm.ddpm_loss(jax.random.PRNGKey(0), sde_lib.VPSDE(), lambda x, t: x, x0)
    _, t = jax.jit(lambda key: ddpm.ddpm_loss(key, sde_lib.VPSDE(), lambda x, t: x, x0, num_timesteps=10))(
        jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(t) * 10, np.round(np.asarray(t) * 10), atol=1e-5)


# ---- ancestral sampling -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ancestral_coefficients_are_algorithm_2(name):
    """Ho et al. 2020, Alg. 2 in float64 from the betas. Float32 log-SNR differences
    carry ~1e-6 absolute error against 2 (lambda_t - lambda_s) >= 0.01: rtol 1e-3."""
    sde = SDES[name]
    betas = np.asarray(sde.betas)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    alpha = 1.0 - betas
    posterior = np.sqrt((1.0 - abar_prev) / (1.0 - abar) * betas)
    forward = np.sqrt(betas)
    forward[0] = 0.0  # no noise at the last step
    for variance, std in (("posterior", posterior), ("beta", forward)):
        c = ddpm.ancestral_coeffs(sde, N_STEPS, variance)
        flip = lambda a: np.asarray(a)[::-1]  # sampling order t_N .. t_1 -> index i - 1
        np.testing.assert_allclose(flip(c.t), np.arange(1, N_STEPS + 1) / N_STEPS, rtol=1e-6)
        np.testing.assert_allclose(flip(c.x_coef), 1.0 / np.sqrt(alpha), rtol=1e-3)
        np.testing.assert_allclose(flip(c.eps_coef), betas / (np.sqrt(alpha) * np.sqrt(1.0 - abar)), rtol=1e-3)
        np.testing.assert_allclose(flip(c.noise_std), std, rtol=1e-3, atol=0)


@pytest.mark.parametrize("sde", [SDES["cosine"], sde_lib.VPSDE(), sde_lib.VESDE()], ids=["ddpm", "vp", "ve"])
def test_ancestral_sampling_is_ddim_with_eta_one(sde):
    """DDIM with eta = 1 is the DDPM posterior step (Song et al. 2020, eq. 16): on the
    grid t_i = i / n, ending with the denoised step to t = 0, it is ancestral sampling.
    Both draw step k's noise from fold_in(split(key)[1], k), so with one key and x_init
    the two chains agree to float32 round-off: measured 3e-5 (VP, VE) and 1.5e-3 (the
    cosine DDPM, whose first step multiplies x by 1 / sqrt(1 - 0.999) = 32) relative
    to the samples' RMS, where chains with different noise differ by ~3."""
    n, shape = 50, (256, 2)
    score_fn = exact_score_fn(sde, MIXTURE)
    x_init = sde.prior_sample(jax.random.PRNGKey(0), shape)
    key = jax.random.PRNGKey(1)
    ours = jax.jit(lambda x: ddpm.ancestral_sample(key, sde, score_fn, shape, n, x_init=x))(x_init)
    ddim = jax.jit(lambda x: solvers.ddim_sample(
        key, sde, score_fn, shape, n, eta=1.0, x_init=x, eps=1.0 / n, discretization="uniform",
        denoise_to_zero=True))(x_init)
    scale = float(jnp.sqrt(jnp.mean(ddim**2)))
    assert float(jnp.max(jnp.abs(ours - ddim))) < 3e-3 * scale


def _check_against_exact(x):
    """Samples x against the mixture, four ways (n = NUM_SAMPLES):
    - component frequencies (nearest component by responsibility) within 0.03 TV of
      the weights: 2x the ~0.014 sampling noise;
    - the pooled within-component moments: with r = x - mu_k for x's component k,
      E r = 0 (per coordinate, standard error 0.5 / sqrt(n)) and E |r|^2 / (2 std^2) = 1
      (an Exp(1) mean, standard error 1 / sqrt(n)), each within 5 standard errors
      (a 3% error in the components' std fails). The components are 6 std apart, so
      assigning by responsibility leaves these moments as they are to ~1e-3;
    - sliced Wasserstein to an exact set within 2x the mean distance of 4 other exact
      sets: at this size the weight noise makes one exact set's distance vary 3x
      (measured 0.45x to 1.5x that mean over 36 draws), so this catches gross errors only.
    """
    n = NUM_SAMPLES
    assert x.shape == (n, 2) and np.all(np.isfinite(np.asarray(x)))
    labels = jnp.argmax(MIXTURE.responsibilities(x), axis=1)
    freq = np.bincount(np.asarray(labels), minlength=MIXTURE.num_components) / n
    weights = np.asarray(MIXTURE.weights_K) / float(np.sum(MIXTURE.weights_K))
    assert float(metrics.total_variation(freq, weights)) <= 0.03
    r = np.asarray(x - MIXTURE.means_KD[labels], np.float64)
    assert np.all(np.abs(r.mean(axis=0)) < 5 * 0.5 / math.sqrt(n)), r.mean(axis=0)
    assert abs(np.mean(np.sum(r**2, axis=1)) / (2 * 0.25) - 1.0) < 5 / math.sqrt(n)
    ref = MIXTURE.sample(jax.random.PRNGKey(101), n)
    swd = functools.partial(metrics.sliced_wasserstein, jax.random.PRNGKey(5), num_projections=128)
    floor = np.mean([float(swd(MIXTURE.sample(jax.random.PRNGKey(200 + k), n), ref)) for k in range(4)])
    assert float(swd(x, ref)) <= 2.0 * floor


# All N = 1000 steps (the default), and a coarser grid of 250 steps t_i = i / 250.
@pytest.mark.parametrize("name,variance,num_steps", [("linear", "posterior", None), ("cosine", "beta", 250)])
def test_ancestral_sample_reproduces_the_mixture(name, variance, num_steps):
    sde = SDES[name]
    x = jax.jit(lambda key: ddpm.ancestral_sample(
        key, sde, exact_score_fn(sde, MIXTURE), (NUM_SAMPLES, 2), num_steps, variance))(jax.random.PRNGKey(0))
    _check_against_exact(x)


@pytest.mark.parametrize("name,sampler", [
    ("linear", "ddim"), ("cosine", "dpm_solver"), ("linear", "ode"),
])
def test_existing_samplers_run_on_the_discrete_sde(name, sampler):
    sde = SDES[name]
    score_fn = exact_score_fn(sde, MIXTURE)
    run = {
        "ddim": lambda key: solvers.ddim_sample(key, sde, score_fn, (NUM_SAMPLES, 2), 50),
        "dpm_solver": lambda key: solvers.dpm_solver_sample(key, sde, score_fn, (NUM_SAMPLES, 2), 20),
        # rtol = atol = 1e-3 gives the same statistics as 1e-5 at a third of the NFE.
        "ode": lambda key: samplers.ode_sample(key, sde, score_fn, (NUM_SAMPLES, 2), rtol=1e-3, atol=1e-3)[0],
    }[sampler]
    _check_against_exact(jax.jit(run)(jax.random.PRNGKey(1)))


def test_probability_flow_likelihood_on_the_discrete_sde():
    """The exact marginal at t = 1 as the prior isolates the ODE solver's error. beta(t)
    jumps at each of the 1000 grid points, which costs the adaptive solver its order:
    at rtol = atol = 1e-6 the worst of 100 points is off by 0.009 nats (2600 NFE),
    against 2e-5 for the smooth VP SDE; 0.02 leaves room for the points drawn."""
    sde = SDES["linear"]
    x = MIXTURE.sample(jax.random.PRNGKey(2), 100)
    logp, _ = jax.jit(lambda x: likelihood.log_likelihood(
        jax.random.PRNGKey(0), sde, exact_score_fn(sde, MIXTURE), x, rtol=1e-6, atol=1e-6, eps=1e-3,
        prior_log_prob=exact_log_prob_fn(sde, MIXTURE, sde.T)))(x)
    truth = exact_log_prob_fn(sde, MIXTURE, 1e-3)(x)
    assert float(jnp.max(jnp.abs(logp - truth))) < 0.02


def test_ancestral_sample_nfe_and_arguments():
    sde = ddpm.DiscreteVPSDE(ddpm.linear_betas(7))
    exact = exact_score_fn(sde, MIXTURE)
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    x = jax.jit(lambda key: ddpm.ancestral_sample(key, sde, counting_score, (4, 2)))(jax.random.PRNGKey(0))
    jax.block_until_ready(x)
    assert len(calls) == 7  # num_steps defaults to sde.num_timesteps
    with pytest.raises(ValueError, match=r"unknown variance 'fixed'; expected one of \('posterior', 'beta'\)"):
        ddpm.ancestral_sample(jax.random.PRNGKey(0), sde, exact, (4, 2), variance="fixed")
    with pytest.raises(ValueError, match=r"num_steps must be a Python int >= 1, got 0"):
        ddpm.ancestral_sample(jax.random.PRNGKey(0), sde, exact, (4, 2), num_steps=0)
    with pytest.raises(ValueError, match=r"x_init has shape \(3, 2\); expected \(4, 2\)"):
        ddpm.ancestral_sample(jax.random.PRNGKey(0), sde, exact, (4, 2), x_init=jnp.zeros((3, 2)))
