"""Tests for genjax/data/toy2d.py: exact densities against float64 references,
samplers against their own densities and closed-form moments.

Statistical checks use a fixed key and a z-threshold (4 or 5 standard errors, SE
estimated from the same samples); with the number of checks per test below, a
correct sampler fails with probability < 1e-4 per test, and each threshold sits far
below the size of the bugs it is meant to catch (wrong weights, wrong scale).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp as np_logsumexp

from genjax.data import toy2d

F32_EPS = float(np.finfo(np.float32).eps)


def _random_mixture(seed, k, d, cond_floor=0.5):
    """A mixture with random well-conditioned full covariances and unequal weights."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ np.swapaxes(a, 1, 2) + cond_floor * np.eye(d)
    weights = rng.uniform(0.2, 1.0, size=k)
    return toy2d.GaussianMixture.create(means, covs, weights)


def _np_params(gm):
    w = np.asarray(gm.weights_K, np.float64)
    return np.asarray(gm.means_KD, np.float64), np.asarray(gm.covs_KDD, np.float64), w / w.sum()


def _scipy_log_prob(x, means, covs, w):
    comps = np.stack(
        [np.atleast_1d(stats.multivariate_normal(means[k], covs[k]).logpdf(x)) for k in range(len(w))], axis=-1
    )
    return np_logsumexp(comps + np.log(w), axis=-1)


def _np_score(x, means, covs, w):
    """Float64 reference: responsibilities times -Sigma_k^{-1}(x - mu_k)."""
    comps = np.stack([stats.multivariate_normal(means[k], covs[k]).logpdf(x) for k in range(len(w))], axis=-1)
    a = comps + np.log(w)
    resp = np.exp(a - np_logsumexp(a, axis=-1, keepdims=True))
    per = np.stack([-np.linalg.solve(covs[k], (x - means[k]).T).T for k in range(len(w))], axis=1)
    return np.einsum("nk,nkd->nd", resp, per)


# --------------------------------------------------------------------------------------
# GaussianMixture: density and score
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,d", [(1, 2), (4, 2), (3, 5)])
def test_log_prob_matches_scipy(k, d):
    gm = _random_mixture(k * 10 + d, k, d)
    means, covs, w = _np_params(gm)
    x = np.random.default_rng(1).normal(scale=3.0, size=(64, d))
    got = np.asarray(gm.log_prob(jnp.asarray(x, jnp.float32)), np.float64)
    # Reference sees the same float32-rounded inputs; float32 Cholesky/solves on
    # covariances with condition number < ~20 keep |error| well below 1e-5 * |log p| + 1e-4.
    want = _scipy_log_prob(x.astype(np.float32).astype(np.float64), means, covs, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,d", [(4, 2), (3, 5)])
def test_score_matches_grad_of_log_prob(k, d):
    gm = _random_mixture(7 + k + d, k, d)
    x = jnp.asarray(np.random.default_rng(2).normal(scale=3.0, size=(32, d)), jnp.float32)
    grad = jax.grad(lambda x_ND: jnp.sum(gm.log_prob(x_ND)))(x)
    score = gm.score(x)
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(grad))))


def test_score_is_stable_far_from_the_mass():
    # At |x| ~ 60 every component density underflows float32 (log N ~ -1800), so a
    # naive sum of densities gives 0/0; the softmax form must still match float64.
    gm = _random_mixture(3, 3, 2)
    means, covs, w = _np_params(gm)
    x = np.array([[60.0, -45.0], [-50.0, 0.0], [0.0, 70.0]])
    got = np.asarray(gm.score(jnp.asarray(x, jnp.float32)))
    want = _np_score(x, means, covs, w)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(gm.log_prob(jnp.asarray(x, jnp.float32))), _scipy_log_prob(x, means, covs, w), rtol=1e-5
    )


def test_mean_and_covariance_closed_form():
    gm = _random_mixture(11, 3, 4)
    means, covs, w = _np_params(gm)
    m = w @ means
    c = np.einsum("k,kde->de", w, covs + np.einsum("kd,ke->kde", means, means)) - np.outer(m, m)
    np.testing.assert_allclose(gm.mean(), m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gm.covariance(), c, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# GaussianMixture: diffusion
# --------------------------------------------------------------------------------------


def test_diffused_single_gaussian_is_the_convolved_gaussian():
    gm = _random_mixture(5, 1, 3)
    means, covs, _ = _np_params(gm)
    alpha, sigma = 0.6, 0.8
    x = np.random.default_rng(3).normal(size=(20, 3))
    ref = stats.multivariate_normal(alpha * means[0], alpha**2 * covs[0] + sigma**2 * np.eye(3))
    xf = jnp.asarray(x, jnp.float32)
    x64 = np.asarray(xf, np.float64)
    want_lp = ref.logpdf(x64)
    want_score = -np.linalg.solve(ref.cov, (x64 - ref.mean).T).T
    diffused = gm.diffused(alpha, sigma)
    np.testing.assert_allclose(diffused.log_prob(xf), want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diffused.score(xf), want_score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gm.diffused_log_prob(xf, alpha, sigma), want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gm.diffused_score(xf, alpha, sigma), want_score, rtol=1e-4, atol=1e-5)


def test_diffused_identity_and_parameters():
    gm = _random_mixture(6, 3, 2)
    x = gm.sample(jax.random.key(0), 50)
    same = gm.diffused(1.0, 0.0)
    np.testing.assert_allclose(same.log_prob(x), gm.log_prob(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gm.diffused_score(x, 1.0, 0.0), gm.score(x), rtol=1e-4, atol=1e-4)
    d = gm.diffused(0.5, 2.0)
    np.testing.assert_allclose(d.means_KD, 0.5 * gm.means_KD, rtol=1e-7)
    np.testing.assert_allclose(d.covs_KDD, 0.25 * gm.covs_KDD + 4.0 * jnp.eye(2), rtol=1e-6)
    np.testing.assert_array_equal(d.weights_K, gm.weights_K)


@pytest.mark.parametrize("k,d,n", [(3, 4, 16), (8, 64, 6)])
def test_per_example_diffusion_matches_loop(k, d, n):
    gm = _random_mixture(100 + d, k, d)
    key_x, key_a, key_s = jax.random.split(jax.random.key(1), 3)
    x = 1.5 * jax.random.normal(key_x, (n, d))
    alpha = jax.random.uniform(key_a, (n,), minval=0.05, maxval=1.0)
    sigma = jax.random.uniform(key_s, (n,), minval=0.05, maxval=2.0)
    lp = gm.diffused_log_prob(x, alpha, sigma)
    sc = gm.diffused_score(x, alpha, sigma)
    # One example at a time through diffused(alpha_n, sigma_n) (jitted once, traced scalars).
    one_lp = jax.jit(lambda x_D, a, s: gm.diffused(a, s).log_prob(x_D[None])[0])
    one_sc = jax.jit(lambda x_D, a, s: gm.diffused(a, s).score(x_D[None])[0])
    lp_loop = jnp.stack([one_lp(x[i], alpha[i], sigma[i]) for i in range(n)])
    sc_loop = jnp.stack([one_sc(x[i], alpha[i], sigma[i]) for i in range(n)])
    # Eigenbasis vs Cholesky in float32: differences ~ eps * cond * |log p|.
    np.testing.assert_allclose(lp, lp_loop, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(sc, sc_loop, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(sc_loop))))
    grad = jax.grad(lambda x_ND: jnp.sum(gm.diffused_log_prob(x_ND, alpha, sigma)))(x)
    np.testing.assert_allclose(sc, grad, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(grad))))


def test_diffused_point_masses_become_isotropic_gaussians():
    # Zero covariances are allowed for diffused_*: x_t = alpha mu_k + sigma eps.
    means = np.array([[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]])
    w = np.array([1.0, 2.0, 3.0])
    gm = toy2d.GaussianMixture.create(means, np.zeros((3, 2, 2)), w)
    x = jax.random.normal(jax.random.key(2), (30, 2))
    alpha = jnp.linspace(0.2, 1.0, 30)
    sigma = jnp.linspace(1.0, 0.3, 30)
    want = np.array(
        [_scipy_log_prob(np.asarray(x[i : i + 1], np.float64), float(alpha[i]) * means,
                         float(sigma[i]) ** 2 * np.eye(2)[None].repeat(3, 0), w / w.sum())[0] for i in range(30)]
    )
    np.testing.assert_allclose(gm.diffused_log_prob(x, alpha, sigma), want, rtol=1e-5, atol=1e-5)


def test_diffusion_under_jit_and_vmap():
    gm = _random_mixture(8, 3, 2)
    x = gm.sample(jax.random.key(3), 40)
    alpha = jnp.linspace(0.1, 1.0, 40)
    sigma = jnp.linspace(1.0, 0.1, 40)
    eager = gm.diffused_score(x, alpha, sigma)
    np.testing.assert_allclose(jax.jit(gm.diffused_score)(x, alpha, sigma), eager, rtol=1e-5, atol=1e-5)
    # One example at a time under vmap equals the batched call.
    per = jax.vmap(lambda x_D, a, s: gm.diffused_score(x_D[None], a, s)[0])(x, alpha, sigma)
    np.testing.assert_allclose(per, eager, rtol=1e-5, atol=1e-5)
    # Traced scalar alpha/sigma in diffused(), vmapped over times.
    lp_TN = jax.jit(jax.vmap(lambda a, s: gm.diffused(a, s).log_prob(x)))(alpha[:5], sigma[:5])
    lp_loop = jnp.stack([gm.diffused(alpha[i], sigma[i]).log_prob(x) for i in range(5)])
    np.testing.assert_allclose(lp_TN, lp_loop, rtol=1e-5, atol=1e-5)
    # d/d alpha through the eigenbasis path equals d/d alpha through diffused()'s Cholesky.
    da = jax.grad(lambda a: jnp.sum(gm.diffused_log_prob(x, a, 0.7)))(0.5)
    db = jax.grad(lambda a: jnp.sum(gm.diffused(a, 0.7).log_prob(x)))(0.5)
    np.testing.assert_allclose(da, db, rtol=1e-4)


# --------------------------------------------------------------------------------------
# GaussianMixture: sampling
# --------------------------------------------------------------------------------------


def test_sample_moments_match_mixture():
    gm = _random_mixture(21, 3, 3)
    means, covs, w = _np_params(gm)
    m = w @ means
    c = np.einsum("k,kde->de", w, covs + np.einsum("kd,ke->kde", means, means)) - np.outer(m, m)
    n = 40_000
    x = np.asarray(gm.sample(jax.random.key(4), n), np.float64)
    assert x.shape == (n, 3) and np.all(np.isfinite(x))
    # CLT: the sample mean has SE std/sqrt(n); each covariance entry is a mean of
    # products (x_i - m_i)(x_j - m_j), whose SE is estimated from those products.
    se_mean = x.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(x.mean(axis=0) - m) < 5 * se_mean)
    xc = x - m
    prod = xc[:, :, None] * xc[:, None, :]
    se_cov = prod.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(prod.mean(axis=0) - c) < 5 * se_cov)


def test_sample_with_labels_frequencies_and_conditionals():
    gm = _random_mixture(31, 4, 2)
    means, covs, w = _np_params(gm)
    n = 40_000
    key = jax.random.key(5)
    x, labels = gm.sample_with_labels(key, n)
    np.testing.assert_array_equal(gm.sample(key, n), x)
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    freq = np.bincount(labels, minlength=4) / n
    assert np.all(np.abs(freq - w) < 5 * np.sqrt(w * (1 - w) / n))
    # Given its label, each sample whitened by its own component is N(0, I).
    for k in range(4):
        z = np.linalg.solve(np.linalg.cholesky(covs[k]), (x[labels == k] - means[k]).T).T
        nk = z.shape[0]
        assert np.all(np.abs(z.mean(axis=0)) < 5 / np.sqrt(nk))
        prod = z[:, :, None] * z[:, None, :]
        assert np.all(np.abs(prod.mean(axis=0) - np.eye(2)) < 5 * prod.std(axis=0) / np.sqrt(nk))


def test_sampling_is_a_function_of_the_key_and_jits():
    gm = _random_mixture(41, 2, 2)
    a = gm.sample(jax.random.key(6), 100)
    np.testing.assert_array_equal(a, gm.sample(jax.random.key(6), 100))
    assert not np.allclose(a, gm.sample(jax.random.key(7), 100))
    np.testing.assert_allclose(jax.jit(gm.sample, static_argnums=1)(jax.random.key(6), 100), a, rtol=1e-6, atol=1e-6)
    assert gm.sample(jax.random.key(6), 0).shape == (0, 2)


def test_mixture_is_a_pytree_under_vmap_and_grad():
    # A batch of 3 mixtures (leading axis on every field) under one vmap.
    gms = [_random_mixture(50 + i, 2, 2) for i in range(3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *gms)
    x = jax.random.normal(jax.random.key(8), (10, 2))
    batched = jax.jit(jax.vmap(lambda g: g.log_prob(x)))(stacked)
    np.testing.assert_allclose(batched, jnp.stack([g.log_prob(x) for g in gms]), rtol=1e-6, atol=1e-6)
    samples = jax.vmap(lambda g, k: g.sample(k, 7))(stacked, jax.random.split(jax.random.key(9), 3))
    assert samples.shape == (3, 7, 2)
    # d/dmu sum_n log N(x_n; mu, s^2 I) = sum_n (x_n - mu) / s^2.
    one = toy2d.GaussianMixture.isotropic(np.array([[0.5, -0.5]]), 0.7)
    g = jax.grad(lambda mix: jnp.sum(mix.log_prob(x)))(one)
    np.testing.assert_allclose(g.means_KD[0], jnp.sum(x - one.means_KD[0], axis=0) / 0.49, rtol=1e-5)


def test_isotropic_per_component_std():
    gm = toy2d.GaussianMixture.isotropic(np.zeros((2, 3)), np.array([0.5, 2.0]))
    np.testing.assert_allclose(gm.covs_KDD[0], 0.25 * np.eye(3))
    np.testing.assert_allclose(gm.covs_KDD[1], 4.0 * np.eye(3))
    np.testing.assert_allclose(gm.weights_K, [0.5, 0.5])


def test_gaussian_rings_mixture_layout():
    gm = toy2d.gaussian_rings_mixture(num=8, radius=4.0, std=0.5)
    np.testing.assert_allclose(jnp.linalg.norm(gm.means_KD, axis=-1), 4.0, rtol=1e-6)
    angles = np.mod(np.arctan2(gm.means_KD[:, 1], gm.means_KD[:, 0]), 2 * np.pi)
    np.testing.assert_allclose(angles, np.arange(8) * np.pi / 4, atol=1e-6)
    np.testing.assert_allclose(gm.weights_K, np.arange(1, 9) / 36.0, rtol=1e-6)
    np.testing.assert_allclose(gm.covs_KDD, np.broadcast_to(0.25 * np.eye(2), (8, 2, 2)), rtol=1e-6)
    eight = toy2d.eight_gaussians_mixture()
    np.testing.assert_allclose(eight.weights_K, np.full(8, 1 / 8), rtol=1e-6)
    np.testing.assert_allclose(eight.means_KD, gm.means_KD)


# --------------------------------------------------------------------------------------
# Named densities
# --------------------------------------------------------------------------------------


def _grid(bound, h):
    """Midpoint grid on [-bound, bound]^2 with spacing h."""
    g = np.arange(-bound, bound, h) + h / 2
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def test_checkerboard_support_and_normalisation():
    d = toy2d.checkerboard()
    n = 40_000
    x = d.sample(jax.random.key(10), n)
    lp = np.asarray(d.log_prob(x))
    np.testing.assert_allclose(lp, -math.log(32.0), rtol=1e-7)  # every sample is on the support
    cells = np.floor((np.asarray(x) + 4.0) / 2.0).astype(int)
    assert np.all((cells >= 0) & (cells <= 3)) and np.all(cells.sum(axis=1) % 2 == 0)
    counts = np.zeros((4, 4))
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    occupied = counts[(np.add.outer(np.arange(4), np.arange(4)) % 2) == 0] / n
    assert np.all(np.abs(occupied - 1 / 8) < 5 * np.sqrt((1 / 8) * (7 / 8) / n))
    # Uniform within its cell: the position inside a cell has mean 1/2, SE sqrt(1/12/n).
    frac = (np.asarray(x, np.float64) + 4.0) / 2.0 - cells
    assert np.all(np.abs(frac.mean(axis=0) - 0.5) < 5 * np.sqrt(1 / 12 / n))
    # A midpoint grid whose cells nest inside the squares integrates the indicator exactly.
    h = 0.05
    p = np.exp(np.asarray(d.log_prob(jnp.asarray(_grid(5.0, h), jnp.float32)), np.float64))
    assert abs(p.sum() * h * h - 1.0) < 1e-6
    off = jnp.array([[-3.0, -1.0], [-1.0, -3.0], [4.5, 0.0], [0.0, -4.01], [1.0, 1.0 + 2.0]])
    assert np.all(np.isneginf(np.asarray(d.log_prob(off))))
    assert d.entropy == pytest.approx(math.log(32.0), rel=1e-12)


def _polar_grid(r_max, h_u, num_angles=64):
    """Polar midpoint rule with r = u^3: points and area weights r dr dtheta.

    The substitution grades the radial nodes towards the origin, where the
    entropy integrand has a p_R(0) log r singularity; in u it is ~u^2 log u, smooth
    enough for the midpoint rule to stay accurate to ~1e-7 at h_u = 0.004.
    """
    u = np.arange(0.0, r_max ** (1 / 3), h_u) + h_u / 2
    r, dr = u**3, 3 * u**2 * h_u
    theta = (np.arange(num_angles) + 0.5) * 2 * np.pi / num_angles
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    x = np.stack([(rr * np.cos(tt)).ravel(), (rr * np.sin(tt)).ravel()], axis=-1)
    return x, (rr * dr[:, None] * 2 * np.pi / num_angles).ravel()


def _cartesian(bound, h):
    return _grid(bound, h), np.full(int(round(2 * bound / h)) ** 2, h * h)


EXACT_DENSITIES = {
    # Quadrature covers all but < e^-50 of the mass, with spacing <= std / 8 so the
    # midpoint rule on these smooth densities errs by far less than 1e-6.
    "eight_gaussians": (lambda: toy2d.eight_gaussians(), lambda: _cartesian(10.0, 0.05)),
    "eight_gaussians_overlapping": (lambda: toy2d.eight_gaussians(radius=1.5, std=0.7), lambda: _cartesian(10.0, 0.05)),
    "rings": (lambda: toy2d.rings(), lambda: _cartesian(4.2, 0.01)),
    # p(x) ~ 1/|x| at the origin here: a Cartesian grid errs by O(h), the polar
    # rule (weights r dr dtheta) integrates the smooth p_R(r) / 2 pi instead.
    "rings_mass_at_origin": (
        lambda: toy2d.rings(radii=(0.0, 1.0), std=0.5, weights=(1.0, 3.0)),
        lambda: _polar_grid(8.5, 0.004),
    ),
}


@pytest.mark.parametrize("name", sorted(EXACT_DENSITIES))
def test_exact_density_normalised_and_entropy_matches_grid(name):
    make, quadrature = EXACT_DENSITIES[name]
    d = make()
    x, weights = quadrature()
    lp = np.asarray(d.log_prob(jnp.asarray(x, jnp.float32)), np.float64)
    p = np.exp(lp)
    # Quadrature error < 1e-6 (above) plus float32 log p (~1e-6 relative): 1e-5 bounds both,
    # for the mass and for -int p log p against the library's float64 entropy.
    assert abs(np.sum(weights * p) - 1.0) < 1e-5
    assert abs(-np.sum(weights * p * lp) - d.entropy) < 1e-5


@pytest.mark.parametrize("name", sorted(EXACT_DENSITIES))
def test_entropy_matches_samples(name):
    d = EXACT_DENSITIES[name][0]()
    n = 20_000
    lp = np.asarray(d.log_prob(d.sample(jax.random.key(11), n)), np.float64)
    # -E_q[log p] = H(q) + KL(q || p) equals H(p) only if the sampler draws from p.
    assert abs(-lp.mean() - d.entropy) < 4 * lp.std() / np.sqrt(n)


def test_rings_weights_and_radii():
    radii, w, std = np.array([0.75, 1.5, 2.25, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]) / 10, 0.08
    d = toy2d.rings(radii=tuple(radii), std=std, weights=tuple(w))
    n = 40_000
    r = np.linalg.norm(np.asarray(d.sample(jax.random.key(12), n), np.float64), axis=-1)
    # Rings are 9 std apart: the band |R - r_k| < 0.3 holds w_k * P(|N(0,1)| < 3.75) of the mass.
    inside = math.erf(0.3 / std / math.sqrt(2))
    for k in range(4):
        frac = np.mean(np.abs(r - radii[k]) < 0.3)
        want = w[k] * inside
        assert abs(frac - want) < 5 * math.sqrt(want * (1 - want) / n)
    # Uniform angle: the sample mean of x / |x| is 0 with SE sqrt(1/2/n) per coordinate.
    x = d.sample(jax.random.key(13), n)
    u = np.asarray(x / jnp.linalg.norm(x, axis=-1, keepdims=True), np.float64)
    assert np.all(np.abs(u.mean(axis=0)) < 5 * np.sqrt(0.5 / n))


def test_rings_log_prob_finite_and_differentiable_at_origin():
    d = toy2d.rings()
    zero = jnp.zeros((1, 2))
    assert np.all(np.isfinite(np.asarray(d.log_prob(zero))))
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda x: d.log_prob(x).sum())(zero))))


def test_pinwheel_moments():
    d = toy2d.pinwheel()
    n = 40_000
    x = np.asarray(d.sample(jax.random.key(14), n), np.float64)
    # Five arms at equally spaced angles: rotations of any vector sum to 0, so E[x] = 0.
    assert np.all(np.abs(x.mean(axis=0)) < 5 * x.std(axis=0) / np.sqrt(n))
    # |x| = 2 |f| with f ~ N((1, 0), diag(0.3^2, 0.1^2)): E|x|^2 = 4 (1 + 0.09 + 0.01).
    sq = np.sum(x**2, axis=-1)
    assert abs(sq.mean() - 4.4) < 5 * sq.std() / np.sqrt(n)


def test_two_moons_geometry_and_mean():
    clean = np.asarray(toy2d.two_moons(noise=0.0).sample(jax.random.key(15), 2000), np.float64)
    u = (clean + np.array([1.0, 0.2])) / 2.0
    on_upper = np.abs(np.linalg.norm(u, axis=-1) - 1.0) < 1e-5
    on_lower = np.abs(np.linalg.norm(u - np.array([1.0, 0.5]), axis=-1) - 1.0) < 1e-5
    assert np.all(on_upper | on_lower)
    assert 0.4 < on_lower.mean() < 0.6  # labels are fair coins: 5 SE is 0.056 at n = 2000
    n = 40_000
    x = np.asarray(toy2d.two_moons().sample(jax.random.key(16), n), np.float64)
    # Arc means (0, 2/pi) and (1, 1/2 - 2/pi) average to (1/2, 1/4); 2u - (1, 0.2) -> (0, 0.3).
    assert np.all(np.abs(x.mean(axis=0) - np.array([0.0, 0.3])) < 5 * x.std(axis=0) / np.sqrt(n))


def test_swiss_roll_geometry_and_mean():
    clean = np.asarray(toy2d.swiss_roll(noise=0.0).sample(jax.random.key(17), 2000), np.float64) * 5.0
    t = np.linalg.norm(clean, axis=-1)
    assert np.all((t > 1.5 * np.pi - 1e-4) & (t < 4.5 * np.pi + 1e-4))
    np.testing.assert_allclose(clean / t[:, None], np.stack([np.cos(t), np.sin(t)], -1), atol=1e-4)
    n = 40_000
    x = np.asarray(toy2d.swiss_roll().sample(jax.random.key(18), n), np.float64)
    a, b = 1.5 * np.pi, 4.5 * np.pi
    # int t cos t = t sin t + cos t,  int t sin t = sin t - t cos t.
    ex = ((b * np.sin(b) + np.cos(b)) - (a * np.sin(a) + np.cos(a))) / (b - a) / 5
    ey = ((np.sin(b) - b * np.cos(b)) - (np.sin(a) - a * np.cos(a))) / (b - a) / 5
    assert np.all(np.abs(x.mean(axis=0) - np.array([ex, ey])) < 5 * x.std(axis=0) / np.sqrt(n))


ALL_DENSITIES = [
    toy2d.eight_gaussians,
    toy2d.checkerboard,
    toy2d.rings,
    toy2d.pinwheel,
    toy2d.two_moons,
    toy2d.swiss_roll,
]


@pytest.mark.parametrize("make", ALL_DENSITIES, ids=lambda f: f.__name__)
def test_density_jit_vmap_and_determinism(make):
    d = make()
    assert d.name == make.__name__
    n = 512
    keys = jax.random.split(jax.random.key(19), 3)
    x = d.sample(keys[0], n)
    assert x.shape == (n, 2) and x.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_array_equal(x, d.sample(keys[0], n))
    assert not np.allclose(x, d.sample(keys[1], n))
    # jit and vmap may fuse float32 arithmetic differently: allow a few tens of ulps.
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda k: d.sample(k, n))(keys[0]), x, **tol)
    batched = jax.vmap(lambda k: d.sample(k, n))(keys)
    np.testing.assert_allclose(batched, jnp.stack([d.sample(k, n) for k in keys]), **tol)
    if d.name != "eight_gaussians":  # the default eight Gaussians (radius 4, std 0.5) reach |x| ~ 6
        # [-4, 4]^2 holds all but a sliver of the mass (< 1e-3 for each); 2% of 1536 is 30 points.
        assert np.mean(np.all(np.abs(np.asarray(batched)) <= 4.0, axis=-1)) > 0.98
    if d.log_prob is None:
        assert d.entropy is None
        return
    lp = d.log_prob(x)
    assert lp.shape == (n,) and np.all(np.isfinite(np.asarray(lp)))
    np.testing.assert_allclose(jax.jit(lambda x_N2: d.log_prob(x_N2))(x), lp, **tol)
    per_row = jax.vmap(lambda x_2: d.log_prob(x_2[None])[0])(x)
    np.testing.assert_allclose(per_row, lp, **tol)
    batched_lp = jax.vmap(d.log_prob)(batched)
    np.testing.assert_allclose(batched_lp[0], lp, **tol)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    gm = toy2d.gaussian_rings_mixture()
    with pytest.raises(ValueError, match="covs_KDD must have shape"):
        toy2d.GaussianMixture.create(np.zeros((2, 3)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="means_KD"):
        toy2d.GaussianMixture.create(np.zeros(3), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="weights_K"):
        toy2d.GaussianMixture.create(np.zeros((2, 2)), np.stack([np.eye(2)] * 2), [1.0, -1.0])
    with pytest.raises(ValueError, match="symmetric"):
        toy2d.GaussianMixture.create(np.zeros((1, 2)), np.array([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        toy2d.GaussianMixture.create(np.zeros((1, 2)), np.array([[[1.0, 0.0], [0.0, -1.0]]]))
    with pytest.raises(ValueError, match="std must be"):
        toy2d.GaussianMixture.isotropic(np.zeros((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="std must be"):
        toy2d.GaussianMixture.isotropic(np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match=r"x_ND must have shape \(N, 2\)"):
        gm.log_prob(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"x_ND must have shape \(N, 2\)"):
        gm.diffused_score(jnp.zeros(4), 1.0, 0.5)
    with pytest.raises(ValueError, match="num must be"):
        gm.sample(jax.random.key(0), 2.5)
    with pytest.raises(ValueError, match="num must be"):
        toy2d.checkerboard().sample(jax.random.key(0), -1)
    with pytest.raises(ValueError, match="std must be"):
        toy2d.rings(std=0.0)
    with pytest.raises(ValueError, match="radii"):
        toy2d.rings(radii=(1.0, -2.0))
    with pytest.raises(ValueError, match="weights"):
        toy2d.rings(weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="noise"):
        toy2d.two_moons(noise=-0.1)
    with pytest.raises(ValueError, match=r"x_N2 must have shape"):
        toy2d.rings().log_prob(jnp.zeros((3, 3)))
