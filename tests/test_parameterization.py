"""Score / eps / x0 / v conversions and EDM preconditioning, checked against the
definitions x_t = alpha x0 + sigma eps, v = alpha eps - sigma x0 and against the
closed-form posterior mean of a diffused Gaussian."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.data import toy2d
from genjax.data.toy2d import exact_score_fn
from genjax.diffusion import parameterization as param
from genjax.diffusion import sde as sde_lib

PAIRS = list(itertools.product(param.PARAMETERIZATIONS, repeat=2))
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(), "ve": sde_lib.VESDE()}


def _random_state(key, n=64, d=3):
    """x0, eps and per-example (alpha, sigma) in float64, covering VP-like (alpha^2 +
    sigma^2 = 1) and VE-like (alpha = 1, sigma up to 50) coefficients."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x0 = 3.0 * jax.random.normal(k1, (n, d), jnp.float64)
    eps = jax.random.normal(k2, (n, d), jnp.float64)
    half = n // 2
    alpha_vp = jax.random.uniform(k3, (half,), jnp.float64, 0.01, 0.999)
    sigma_ve = jnp.exp(jax.random.uniform(k4, (n - half,), jnp.float64, np.log(0.01), np.log(50.0)))
    alpha = jnp.concatenate([alpha_vp, jnp.ones(n - half, jnp.float64)])
    sigma = jnp.concatenate([jnp.sqrt(1.0 - alpha_vp**2), sigma_ve])
    x = alpha[:, None] * x0 + sigma[:, None] * eps
    return x, x0, eps, alpha, sigma


@pytest.mark.parametrize("source,target", PAIRS)
def test_true_predictions_map_to_true_predictions(source, target):
    with jax.enable_x64(True):
        x, x0, eps, alpha, sigma = _random_state(jax.random.PRNGKey(0))
        a, s = alpha[:, None], sigma[:, None]
        truth = {"x0": x0, "eps": eps, "score": -eps / s, "v": a * eps - s * x0}
        out = param.convert(truth[source], x, alpha, sigma, source=source, target=target)
        # float64 conversions: only round-off, relative to the target's scale.
        chex.assert_trees_all_close(out, truth[target], rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(truth[target]))))


@pytest.mark.parametrize("source,target", PAIRS)
def test_round_trip_is_identity(source, target):
    with jax.enable_x64(True):
        x, _, _, alpha, sigma = _random_state(jax.random.PRNGKey(1))
        # An arbitrary prediction (not consistent with any x0): the maps are affine
        # bijections for alpha, sigma > 0, so the round trip must still be exact.
        pred = 2.0 * jax.random.normal(jax.random.PRNGKey(2), x.shape, jnp.float64)
        there = param.convert(pred, x, alpha, sigma, source=source, target=target)
        back = param.convert(there, x, alpha, sigma, source=target, target=source)
        chex.assert_trees_all_close(back, pred, rtol=1e-9, atol=1e-9)


def test_round_trip_in_float32():
    key1, key2, key3 = jax.random.split(jax.random.PRNGKey(4), 3)
    x = 3.0 * jax.random.normal(key1, (64, 3))
    alpha = jax.random.uniform(key2, (64,), minval=0.05, maxval=1.0)
    sigma = jax.random.uniform(key3, (64,), minval=0.05, maxval=5.0)
    pred = jax.random.normal(jax.random.PRNGKey(3), x.shape)

    def round_trip(source, target):
        there = param.convert(pred, x, alpha, sigma, source=source, target=target)
        return param.convert(there, x, alpha, sigma, source=target, target=source)

    # One pytree keyed by the pair, so a failure names the conversion that broke.
    backs = {f"{source}->{target}": round_trip(source, target) for source, target in PAIRS}
    # sigma >= 0.05 and alpha >= 0.05 bound the condition number by ~1e3, so
    # float32 round-off (6e-8) stays below 1e-4.
    chex.assert_trees_all_close(backs, {pair: pred for pair in backs}, rtol=1e-4, atol=1e-4)


def test_unknown_parameterization_lists_valid_names():
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=r"unknown target parameterization 'velocity'.*'score', 'eps', 'x0', 'v'"):
        param.convert(x, x, 1.0, 1.0, source="eps", target="velocity")
    with pytest.raises(ValueError, match="unknown source parameterization 'noise'"):
        param.convert_fn(SDES["vp"], lambda x, t: x, source="noise", target="x0")


def _gaussian_posterior_mean(x, mean_D, var, alpha, sigma):
    """E[x0 | x_t = x] for x0 ~ N(mean, var I): mean + alpha var / (alpha^2 var + sigma^2) (x - alpha mean)."""
    a, s = alpha[:, None], sigma[:, None]
    return mean_D + a * var / (a * a * var + s * s) * (x - a * mean_D)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_denoiser_from_exact_score_is_the_posterior_mean(name):
    sde = SDES[name]
    mean_D, std = np.array([1.5, -0.5, 2.0]), 0.7
    gaussian = toy2d.GaussianMixture.isotropic(mean_D[None], std)
    score_fn = exact_score_fn(sde, gaussian)
    t = jnp.linspace(0.01, 1.0, 40)  # one time per example
    alpha, sigma = sde.marginal_coeffs(t)
    x = sde.prior_std() * jax.random.normal(jax.random.PRNGKey(0), (40, 3))
    x0_expected = _gaussian_posterior_mean(x, jnp.asarray(mean_D, jnp.float32), std**2, alpha, sigma)
    x0 = param.denoiser_from_score(sde, score_fn)(x, t)
    scale = float(jnp.max(jnp.abs(x0_expected)))
    np.testing.assert_allclose(x0, x0_expected, rtol=1e-4, atol=1e-5 * scale)
    # E[eps | x] = sigma / (alpha^2 var + sigma^2) (x - alpha mean), in a form free of
    # the cancellation in (x - alpha x0) / sigma at small sigma.
    a, s = alpha[:, None], sigma[:, None]
    eps_expected = s / (a * a * std**2 + s * s) * (x - a * jnp.asarray(mean_D, jnp.float32))
    eps = param.eps_from_score(sde, score_fn)(x, t)
    np.testing.assert_allclose(eps, eps_expected, rtol=1e-4, atol=1e-4)
    v = param.v_from_score(sde, score_fn)(x, t)
    np.testing.assert_allclose(v, alpha[:, None] * eps - sigma[:, None] * x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_function_transformers_invert_each_other(name):
    sde = SDES[name]
    score_fn = exact_score_fn(sde, toy2d.gaussian_rings_mixture(8, 4.0, 0.5))
    t = jnp.linspace(0.05, 1.0, 32)
    x = sde.prior_std() * jax.random.normal(jax.random.PRNGKey(5), (32, 2))
    score = score_fn(x, t)
    scale = float(jnp.max(jnp.abs(score)))
    back_x0 = param.score_from_x0(sde, param.denoiser_from_score(sde, score_fn))(x, t)
    back_eps = param.score_from_eps(sde, param.eps_from_score(sde, score_fn))(x, t)
    back_v = param.score_from_v(sde, param.v_from_score(sde, score_fn))(x, t)
    chex.assert_trees_all_close((back_x0, back_eps, back_v), (score,) * 3, rtol=1e-4, atol=1e-4 * scale)
    # A scalar t broadcasts over the batch like a per-example one (rtol: numpy's default).
    chex.assert_trees_all_close(
        param.denoiser_from_score(sde, score_fn)(x, 0.3),
        param.denoiser_from_score(sde, score_fn)(x, jnp.full((32,), 0.3)),
        rtol=1e-7,
    )


# ---- EDM preconditioning ---------------------------------------------------------------


class EDMClosedFormTest(chex.TestCase):
    """EDM's preconditioning against its closed forms, each computed under `jax.jit`
    and eagerly (`chex.variants`, which unrolls one test per variant in a `chex.TestCase`)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_edm_preconditioning_gives_unit_variance_input_and_target(self):
        sigma_data = 0.5
        sigma = jnp.exp(jnp.linspace(np.log(0.002), np.log(80.0), 50))
        c_skip, c_out, c_in, c_noise = self.variant(param.edm_preconditioning)(sigma, sigma_data)
        # Karras et al. 2022, App. B.6: Var[c_in (x0 + sigma n)] = 1 and the
        # effective target (x0 - c_skip x) / c_out has unit variance for Var[x0] = sigma_data^2;
        # c_noise = ln(sigma) / 4.
        target_var = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
        chex.assert_trees_all_close(
            (c_in**2 * (sigma**2 + sigma_data**2), target_var, jnp.exp(4.0 * c_noise)),
            (1.0, 1.0, sigma),
            rtol=1e-5,
        )
        # c_skip minimises the target's variance before scaling (App. B.6): zero derivative.
        unscaled_var = lambda c, s: (1 - c) ** 2 * sigma_data**2 + c**2 * s**2
        slope = jax.vmap(jax.grad(unscaled_var))(c_skip, sigma)
        chex.assert_trees_all_close(slope, 0.0, atol=1e-5, rtol=1e-7)  # rtol: numpy's default

    @chex.variants(with_jit=True, without_jit=True)
    def test_edm_denoiser_is_exact_for_the_ideal_network(self):
        sigma_data = 0.5
        key1, key2, key3 = jax.random.split(jax.random.PRNGKey(0), 3)
        x0 = sigma_data * jax.random.normal(key1, (16, 4))
        sigma = jnp.exp(jax.random.uniform(key2, (16,), minval=np.log(0.002), maxval=np.log(80.0)))
        x = x0 + sigma[:, None] * jax.random.normal(key3, (16, 4))

        def ideal_raw(x_in, c_noise):
            # Recover x and sigma from what the wrapper passes, so a wrong c_in or c_noise fails.
            s = jnp.exp(4.0 * c_noise)
            x_rec = x_in * jnp.sqrt(s**2 + sigma_data**2)[:, None]
            return param.edm_training_target(x_rec, x0, s, sigma_data)

        denoised = self.variant(param.edm_denoiser(ideal_raw, sigma_data))(x, sigma)
        chex.assert_trees_all_close(denoised, x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_edm_denoiser_in_scaled_variables_matches_the_sde_denoiser(name):
    sde = SDES[name]
    mixture = toy2d.gaussian_rings_mixture(8, 4.0, 0.5)

    def edm_exact_denoiser(y, s):
        # x0 = y + s^2 grad log p(y; s) for y = x0 + s n (Tweedie, alpha = 1).
        return y + (s**2)[:, None] * mixture.diffused_score(y, jnp.ones_like(s), s)

    t = jnp.linspace(0.02, 1.0, 24)
    x = jax.random.normal(jax.random.PRNGKey(6), (24, 2))
    via_edm = param.x0_fn_from_edm_denoiser(sde, edm_exact_denoiser)(x, t)
    direct = param.denoiser_from_score(sde, exact_score_fn(sde, mixture))(x, t)
    np.testing.assert_allclose(via_edm, direct, rtol=1e-4, atol=1e-4)
