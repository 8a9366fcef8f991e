"""MCMC on batches of chains against targets whose law is known in closed form: a
correlated Gaussian (MALA exactly, ULA's biased stationary law exactly), a Gaussian
mixture with exact samples, and identities between the samplers."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import mcmc, metrics
from genjax.data import toy2d

MU = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.8], [0.8, 1.0]])  # eigenvalues 1.8 and 0.2
PREC = np.linalg.inv(COV)


def gaussian_log_prob(x_N2):
    d_N2 = x_N2 - jnp.asarray(MU, x_N2.dtype)
    return -0.5 * jnp.einsum("ni,ij,nj->n", d_N2, jnp.asarray(PREC, x_N2.dtype), d_N2)


gaussian_score = jax.grad(lambda x: jnp.sum(gaussian_log_prob(x)))


def _moment_z_scores(x_N2, mean_2, cov_22):
    """Errors of the sample mean and covariance of N iid draws of N(mean, cov), in
    standard errors: SE(mean_i) = sqrt(C_ii / N), SE(C_ij) = sqrt((C_ii C_jj + C_ij^2) / N)
    (the variance of a product of two centred Gaussians)."""
    x = np.asarray(x_N2, np.float64)
    n = x.shape[0]
    z_mean = (x.mean(0) - mean_2) / np.sqrt(np.diag(cov_22) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov_22), np.diag(cov_22)) + cov_22**2) / n)
    z_cov = (np.cov(x.T) - cov_22) / se_cov
    return np.abs(z_mean).max(), np.abs(z_cov).max()


NUM_REFERENCE = 400_000


def _numpy_mala_acceptance(step, num=NUM_REFERENCE, seed=0):
    """E[min(1, Hastings ratio)] at stationarity, in float64 NumPy from exact draws: an
    implementation of the acceptance test independent of genjax.mcmc."""
    rng = np.random.default_rng(seed)
    x = MU + rng.standard_normal((num, 2)) @ np.linalg.cholesky(COV).T
    grad = lambda v: -(v - MU) @ PREC
    log_p = lambda v: 0.5 * np.sum((v - MU) * grad(v), 1)
    y = x + step * grad(x) + math.sqrt(2 * step) * rng.standard_normal(x.shape)
    log_q = lambda to, frm: -np.sum((to - frm - step * grad(frm)) ** 2, 1) / (4 * step)
    log_ratio = log_p(y) - log_p(x) + log_q(x, y) - log_q(y, x)
    return float(np.mean(np.exp(np.minimum(log_ratio, 0.0))))


def test_mala_matches_correlated_gaussian_and_corrects_ula_bias():
    num_chains, step = 10_000, 0.2
    # A broad start far from the mean; the slowest direction contracts by
    # 1 - h/1.8 per step, so after 300 steps the start is forgotten (e^-33).
    x0 = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (num_chains, 2))
    x, _ = mcmc.mala_sample(jax.random.PRNGKey(1), gaussian_log_prob, x0, step_size=step, num_steps=300)
    # 5 standard errors: with 2 means and 3 covariance entries, a correct sampler
    # fails with probability < 5 * 6e-7.
    z_mean, z_cov = _moment_z_scores(x, MU, COV)
    assert z_mean < 5 and z_cov < 5, (z_mean, z_cov)

    # Started at stationarity, the acceptance rate estimates the stationary acceptance
    # probability. Each chain's rate over the steps is in [0, 1], so its variance is
    # at most 1/4 whatever the correlation between steps: the mean over N chains has
    # SE <= 0.5 / sqrt(N) = 0.005, the reference's over M iid draws SE <= 0.5 / sqrt(M).
    # 5 SE of the difference.
    _, rate = mcmc.mala_sample(jax.random.PRNGKey(2), gaussian_log_prob, x, step_size=step, num_steps=50)
    want = _numpy_mala_acceptance(step)  # about 0.78 at h = 0.2
    tol = 5 * 0.5 * math.sqrt(1 / num_chains + 1 / NUM_REFERENCE)
    assert abs(float(rate) - want) < tol, (float(rate), want)

    # ULA at the same step size has a different stationary law: the linear chain
    # x' = x - hP(x - mu) + sqrt(2h) z keeps N(mu, C), C = (P (I - hP/2))^-1
    # (P and C commute; solve C = (I - hP) C (I - hP) + 2h I), twice the variance
    # along the stiff direction here. MALA's correction is what removes it.
    cov_ula = np.linalg.inv(PREC @ (np.eye(2) - step * PREC / 2))
    x_ula = mcmc.langevin_sample(jax.random.PRNGKey(1), gaussian_score, x0, step_size=step, num_steps=300)
    z_mean, z_cov = _moment_z_scores(x_ula, MU, cov_ula)
    assert z_mean < 5 and z_cov < 5, (z_mean, z_cov)
    # Against the true covariance the same statistic is about 11 (variance 1.15 vs 1,
    # SE 0.014): the 5-SE test that MALA passes rejects ULA.
    _, z_cov_true = _moment_z_scores(x_ula, MU, COV)
    assert z_cov_true > 5, z_cov_true


@pytest.mark.parametrize("outside", [-jnp.inf, jnp.nan])
def test_mala_rejects_non_finite_proposals(outside):
    """A standard normal restricted to x_0 > 0, log p = -inf (or NaN) outside: chains
    never leave the support and sample the half-normal, E[x_0] = sqrt(2/pi)."""
    def log_prob(x_N2):
        return jnp.where(x_N2[:, 0] > 0, -0.5 * jnp.sum(x_N2**2, 1), outside)

    num_chains = 4000
    x0 = jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (num_chains, 2))) + 0.5
    x, rate = mcmc.mala_sample(jax.random.PRNGKey(1), log_prob, x0, step_size=0.5, num_steps=200)
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x)) and np.all(x[:, 0] > 0)
    assert 0.0 < float(rate) < 1.0
    # 5 standard errors of the mean of N half-normal draws (variance 1 - 2/pi).
    assert abs(x[:, 0].mean() - math.sqrt(2 / math.pi)) < 5 * math.sqrt((1 - 2 / math.pi) / num_chains)


MIXTURE = toy2d.GaussianMixture.isotropic(
    np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]]), 0.7, np.array([1.0, 2.0, 3.0]))


def test_ula_reaches_the_sampling_floor_on_a_gaussian_mixture():
    """Overlapping modes with unequal weights, so chains from a broad start must move
    mass between modes to get the weights right."""
    n, num_refs = 2000, 4
    score_fn = jax.grad(lambda x: jnp.sum(MIXTURE.log_prob(x)))
    x0 = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    # T = h * steps = 10 time units, many times the time to cross between modes.
    x = mcmc.langevin_sample(jax.random.PRNGKey(7), score_fn, x0, step_size=0.02, num_steps=500)
    assert np.all(np.isfinite(np.asarray(x)))

    swd = jax.jit(lambda a, b: metrics.sliced_wasserstein(jax.random.PRNGKey(5), a, b))
    refs = [MIXTURE.sample(jax.random.PRNGKey(100 + k), n) for k in range(2 * num_refs)]
    floor = np.mean([float(swd(refs[k], refs[num_refs + k])) for k in range(num_refs)])
    dist = np.mean([float(swd(x, refs[k])) for k in range(num_refs)])
    # With exact samples in place of the chains, dist / floor has mean 0.99 and sd
    # 0.15 (30 seeds, max 1.33), so 1.5 is over 3 sd. ULA's O(h) bias, about +1% in
    # each component's variance at h = 0.02 (see the Gaussian test), adds to the
    # SWD in quadrature and is far below the floor. For comparison, h = 0.3 gives
    # 1.7-2.3, equal mixture weights 4-5, and the broad start about 40.
    assert dist <= 1.5 * floor, (dist, floor)
    assert float(swd(x0, refs[0])) > 10 * floor


def test_ula_per_chain_step_sizes_on_images():
    """Target N(0, I) on (N, H, W, C): ULA keeps N(0, v I), v = 1 / (1 - h/2), per chain."""
    num_chains, shape = 400, (4, 4, 3)
    step_N = jnp.where(jnp.arange(num_chains) % 2 == 0, 0.5, 0.1)
    x = mcmc.langevin_sample(jax.random.PRNGKey(0), lambda x: -x, jnp.zeros((num_chains,) + shape),
                             step_size=step_N, num_steps=100)  # start forgotten: (1 - 0.1)^200 < 1e-9
    assert x.shape == (num_chains,) + shape
    x = np.asarray(x, np.float64)
    for h, rows in [(0.5, x[0::2]), (0.1, x[1::2])]:
        v, m = 1.0 / (1.0 - h / 2), rows.size
        # 5 SE of a variance estimate from m iid N(0, v) draws: v sqrt(2 / m).
        assert abs(np.mean(rows**2) - v) < 5 * v * math.sqrt(2 / m), (h, np.mean(rows**2), v)

    # Chain i with step h_i is chain i of the run with scalar step h_i: the noise is
    # drawn for the whole batch from the same keys.
    x_half = mcmc.langevin_sample(jax.random.PRNGKey(0), lambda x: -x, jnp.zeros((num_chains,) + shape),
                                  step_size=0.5, num_steps=100)
    np.testing.assert_allclose(x[0::2], np.asarray(x_half)[0::2], rtol=1e-6, atol=1e-6)


def test_sgld_with_matched_noise_is_ula():
    step, x0 = 0.05, jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    ula = mcmc.langevin_sample(jax.random.PRNGKey(3), gaussian_score, x0, step_size=step, num_steps=40)
    sgld = mcmc.sgld_sample(jax.random.PRNGKey(3), lambda x: -gaussian_score(x), x0, step_size=step,
                            noise_scale=math.sqrt(2 * step), num_steps=40)
    np.testing.assert_array_equal(np.asarray(sgld), np.asarray(ula))
    # The energy's own gradient, E = -log p: equal up to float rounding.
    energy_grad = jax.grad(lambda x: -jnp.sum(gaussian_log_prob(x)))
    sgld_e = mcmc.sgld_sample(jax.random.PRNGKey(3), energy_grad, x0, step_size=step,
                              noise_scale=math.sqrt(2 * step), num_steps=40)
    np.testing.assert_allclose(np.asarray(sgld_e), np.asarray(ula), rtol=1e-5, atol=1e-5)


def test_sgld_clip_options():
    x0 = jnp.array([[0.5, -2.0], [3.0, 0.01]])
    steep = lambda x: 1000.0 * x  # E = 500 ||x||^2
    # No noise, gradients clipped elementwise to [-1, 1]: x' = x - h clip(1000 x).
    x = mcmc.sgld_sample(jax.random.PRNGKey(0), steep, x0, step_size=0.1, noise_scale=0.0, num_steps=1,
                         clip_grad=1.0)
    np.testing.assert_allclose(x, x0 - 0.1 * np.clip(1000.0 * np.asarray(x0), -1, 1), rtol=1e-6)
    # The box clamps the updated state; one step is the clamp of the unclamped step.
    kw = dict(step_size=0.01, noise_scale=1.0, num_steps=1)
    free = mcmc.sgld_sample(jax.random.PRNGKey(1), steep, x0, **kw)
    boxed = mcmc.sgld_sample(jax.random.PRNGKey(1), steep, x0, clip_x=(-1.0, 1.0), **kw)
    assert np.any(np.abs(np.asarray(free)) > 1.0)
    np.testing.assert_array_equal(boxed, np.clip(np.asarray(free), -1.0, 1.0))
    many = mcmc.sgld_sample(jax.random.PRNGKey(1), steep, x0, step_size=0.01, noise_scale=1.0, num_steps=20,
                            clip_grad=0.5, clip_x=(0.0, 1.0))
    assert np.all((np.asarray(many) >= 0.0) & (np.asarray(many) <= 1.0))


X4 = jnp.zeros((4, 2))
SCORE = lambda x: -x


@pytest.mark.parametrize("call,message", [
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=0.0), r"step_size .*> 0, got 0\.0"),
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=-0.1), r"step_size .*got -0\.1"),
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=float("nan")), r"step_size .*got nan"),
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=jnp.array([0.1, 0.1, -0.5, 0.1])),
     r"step_size .*-0\.5"),
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=jnp.ones(3)), r"shape \(3,\).*\(4,\)"),
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, num_steps=0), r"num_steps .*got 0"),
    (lambda: mcmc.langevin_sample(jax.random.PRNGKey(0), SCORE, X4, num_steps=2.5), r"num_steps .*got 2\.5"),
    (lambda: mcmc.mala_sample(jax.random.PRNGKey(0), gaussian_log_prob, X4, step_size=-1.0), r"step_size .*got -1\.0"),
    (lambda: mcmc.mala_sample(jax.random.PRNGKey(0), gaussian_log_prob, X4, num_steps=-3), r"num_steps .*got -3"),
    (lambda: mcmc.sgld_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=0.0, noise_scale=0.1, num_steps=1),
     r"step_size .*got 0\.0"),
    (lambda: mcmc.sgld_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=0.1, noise_scale=-0.1, num_steps=1),
     r"noise_scale .*>= 0, got -0\.1"),
    (lambda: mcmc.sgld_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=0.1, noise_scale=0.1, num_steps=0),
     r"num_steps .*got 0"),
    (lambda: mcmc.sgld_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=0.1, noise_scale=0.1, num_steps=1,
                              clip_grad=0.0), r"clip_grad .*got 0\.0"),
    (lambda: mcmc.sgld_sample(jax.random.PRNGKey(0), SCORE, X4, step_size=0.1, noise_scale=0.1, num_steps=1,
                              clip_x=(1.0, 0.0)), r"clip_x .*low < high"),
])
def test_bad_arguments_raise_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_jit_and_vmap_over_step_sizes():
    key, x0 = jax.random.PRNGKey(4), jax.random.normal(jax.random.PRNGKey(0), (256, 2))
    run = lambda h: mcmc.mala_sample(key, gaussian_log_prob, x0, step_size=h, num_steps=60)
    # Below ULA's stability limit 2 / lambda_max(P) = 0.4. Past it the Hastings ratio
    # is a difference of large terms, and float rounding, which differs between
    # compiled programs, can flip an accept decision and send a chain elsewhere.
    steps = jnp.array([0.05, 0.1, 0.2])
    x_K, rate_K = jax.jit(jax.vmap(run))(steps)
    assert x_K.shape == (3, 256, 2) and rate_K.shape == (3,)
    single = jax.jit(run)  # one compiled program for every step size
    for k, h in enumerate(steps):
        x, rate = single(h)
        np.testing.assert_allclose(x_K[k], x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rate_K[k], rate, rtol=1e-6)
    # A larger step is rejected more often (about 0.97, 0.92, 0.79).
    assert np.all(np.diff(np.asarray(rate_K)) < 0), rate_K

    run_ula = lambda h: mcmc.langevin_sample(key, gaussian_score, x0, step_size=h, num_steps=20)
    ula = jax.jit(jax.vmap(run_ula))(steps)
    for k, h in enumerate(steps):
        np.testing.assert_allclose(ula[k], run_ula(float(h)), rtol=1e-5, atol=1e-5)
    sgld = jax.jit(lambda h, s: mcmc.sgld_sample(key, lambda x: -gaussian_score(x), x0, step_size=h,
                                                 noise_scale=s, num_steps=20))(steps[1], jnp.sqrt(2 * steps[1]))
    np.testing.assert_allclose(sgld, ula[1], rtol=1e-5, atol=1e-5)


def test_diffusion_corrector_is_a_langevin_step():
    """The predictor-corrector's Langevin corrector (Song et al. 2021, Algorithm 5)
    computes its SNR step size and then takes `mcmc.langevin_step` with the same key:
    identical to the update written out, its noise drawn once from that key."""
    from genjax.diffusion import samplers
    from genjax.diffusion import sde as sde_lib

    sde = sde_lib.VPSDE()
    rsde = sde.reverse(lambda x, t: -x / (1.0 + t[:, None, None, None]))
    key, x = jax.random.PRNGKey(5), jax.random.normal(jax.random.PRNGKey(4), (8, 4, 4, 3))
    t, dt = jnp.full((8,), 0.3), jnp.full((8,), 0.02)
    got_x, got_mean = samplers.langevin_corrector(key, rsde, x, t, dt, snr=0.1)

    norm = lambda v: jnp.sqrt(jnp.sum(jnp.reshape(v, (8, -1)) ** 2, axis=1))
    score, z = rsde.score_fn(x, t), jax.random.normal(key, x.shape)
    step = 2.0 * sde.langevin_alpha(t, dt) * (0.1 * jnp.mean(norm(z)) / jnp.mean(norm(score))) ** 2
    want_mean = x + step[:, None, None, None] * score
    want_x = want_mean + jnp.sqrt(2.0 * step)[:, None, None, None] * z
    chex.assert_trees_all_equal((got_x, got_mean), (want_x, want_mean))
