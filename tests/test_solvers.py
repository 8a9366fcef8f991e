"""Fast samplers against the probability-flow ODE of Gaussian mixtures with an exact
score: every error is the solver's own.

Deterministic samplers are compared with the ODE solved adaptively at rtol = atol =
1e-6 from the same initial noise. That reference differs from tighter solves by
6e-7 (VP, 2-D rings, vs 1e-7), 9e-7 (VE, 2-D rings, vs 1e-8) and 2e-6 (VP, 64-D, vs
1e-8) relative RMS: far below the smallest error used here (~2e-4). Error =
relative RMS ||x - x_ref|| / ||x_ref|| over the batch.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import integrate, metrics
from genjax.data import toy2d
from genjax.data.toy2d import exact_score_fn
from genjax.diffusion import samplers, solvers
from genjax.diffusion import sde as sde_lib
from genjax.diffusion.parameterization import denoiser_from_score

EPS = 1e-3
NUM = 2000
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(), "ve": sde_lib.VESDE()}


def _mix64():
    # Five isotropic components in 64-D with fixed random means and stds, weights 1..5.
    rng = np.random.RandomState(0)
    return toy2d.GaussianMixture.isotropic(rng.randn(5, 64), rng.uniform(0.3, 1.0, 5), np.arange(1, 6))


MIXTURES = {"rings2d": toy2d.gaussian_rings_mixture(8, 4.0, 0.5), "mix64d": _mix64()}
SAMPLERS = {
    "ddim": solvers.ddim_sample,
    "dpm2m": functools.partial(solvers.dpm_solver_sample, order=2),
    "dpm3m": functools.partial(solvers.dpm_solver_sample, order=3),
    "dpm1": functools.partial(solvers.dpm_solver_sample, order=1),
    "heun": solvers.edm_heun_sample,
}


@functools.cache
def _problem(sde_name, mix_name):
    """(sde, score_fn, x_init, adaptive reference) for one SDE and mixture."""
    sde, mixture = SDES[sde_name], MIXTURES[mix_name]
    score_fn = exact_score_fn(sde, mixture)
    x_init = sde.prior_sample(jax.random.PRNGKey(0), (NUM, mixture.dim))
    ref, _ = jax.jit(lambda x: samplers.ode_sample(
        None, sde, score_fn, x.shape, rtol=1e-6, atol=1e-6, eps=EPS, x_init=x))(x_init)
    return sde, score_fn, x_init, ref


@functools.cache
def _sample(sampler, sde_name, mix_name, num_steps, discretization="logsnr", denoise_to_zero=False):
    sde, score_fn, x_init, _ = _problem(sde_name, mix_name)
    fn = SAMPLERS[sampler]
    return jax.jit(lambda x: fn(
        jax.random.PRNGKey(1), sde, score_fn, x.shape, num_steps, x_init=x, eps=EPS,
        discretization=discretization, denoise_to_zero=denoise_to_zero))(x_init)


def _rel_err(x, ref):
    return float(jnp.sqrt(jnp.sum((x - ref) ** 2) / jnp.sum(ref**2)))


def _err(sampler, sde_name, mix_name, num_steps, discretization="logsnr"):
    x = _sample(sampler, sde_name, mix_name, num_steps, discretization)
    return _rel_err(x, _problem(sde_name, mix_name)[3])


# ---- time grids -------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("discretization", solvers.DISCRETIZATIONS)
def test_time_grid_has_its_spacing(sde_name, discretization):
    sde, n, rho = SDES[sde_name], 12, 7.0
    ts = solvers.time_grid(sde, n, EPS, discretization, rho)
    assert ts.shape == (n + 1,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == pytest.approx(EPS, rel=1e-7)
    assert bool(jnp.all(jnp.diff(ts) < 0))
    lam = solvers.log_snr(sde, ts)
    # The quantity that each grid spaces uniformly, per its definition.
    uniform_in = {
        "logsnr": lam,
        "edm": jnp.exp(-lam / rho),  # sigma_edm^(1/rho)
        "quadratic": jnp.sqrt((ts - EPS) / (sde.T - EPS)),
        "uniform": ts,
    }[discretization]
    steps = jnp.diff(uniform_in)
    np.testing.assert_allclose(steps, steps[0], rtol=2e-4)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_t_from_log_snr_matches_closed_form(sde_name):
    sde = SDES[sde_name]
    lam = jnp.linspace(float(solvers.log_snr(sde, sde.T)), float(solvers.log_snr(sde, EPS)), 200)
    if sde_name == "vp":
        # lambda = log alpha - log sigma with sigma^2 = 1 - alpha^2 gives log alpha =
        # -log(1 + e^{-2 lambda}) / 2; then solve the quadratic log alpha(t) for t.
        log_alpha = -0.5 * jnp.log1p(jnp.exp(-2.0 * lam))
        a, b = 0.25 * (sde.beta_max - sde.beta_min), 0.5 * sde.beta_min
        expected = (-b + jnp.sqrt(b * b - 4.0 * a * log_alpha)) / (2.0 * a)
    else:
        # sigma = sigma_min sqrt(exp(2 t L) - 1), L = log(sigma_max / sigma_min), alpha = 1.
        L = np.log(sde.sigma_max / sde.sigma_min)
        expected = jnp.log1p(jnp.exp(-2.0 * lam) / sde.sigma_min**2) / (2.0 * L)
    t = solvers.t_from_log_snr(sde, lam, EPS, sde.T)
    np.testing.assert_allclose(t, expected, rtol=2e-5, atol=1e-7)


def test_t_from_log_snr_inverts_log_snr_for_sub_vp():
    sde = SDES["subvp"]
    t = jnp.linspace(EPS, 1.0, 500)
    np.testing.assert_allclose(solvers.t_from_log_snr(sde, solvers.log_snr(sde, t), EPS, 1.0), t, rtol=1e-5, atol=1e-7)


# ---- API ----------------------------------------------------------------------------------


def test_bad_arguments_raise_with_valid_names():
    sde = SDES["vp"]
    score_fn = exact_score_fn(sde, MIXTURES["rings2d"])
    key, shape = jax.random.PRNGKey(0), (4, 2)
    with pytest.raises(ValueError, match=r"unknown discretization 'cosine'.*'logsnr', 'edm', 'quadratic', 'uniform'"):
        solvers.ddim_sample(key, sde, score_fn, shape, 4, discretization="cosine")
    with pytest.raises(ValueError, match=r"unknown DPM-Solver order 4; expected one of \(1, 2, 3\)"):
        solvers.dpm_solver_sample(key, sde, score_fn, shape, 4, order=4)
    with pytest.raises(ValueError, match=r"unknown third_order form 'kdiff'.*'exact', 'reference'"):
        solvers.dpm_solver_sample(key, sde, score_fn, shape, 4, third_order="kdiff")
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'.*'ddim', 'dpm_solver', 'edm_heun'"):
        solvers.nfe("euler", 10)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\], got 1.5"):
        solvers.ddim_sample(key, sde, score_fn, shape, 4, eta=1.5)
    with pytest.raises(ValueError, match=r"num_steps must be a Python int >= 1, got 0"):
        solvers.edm_heun_sample(key, sde, score_fn, shape, 0)
    with pytest.raises(ValueError, match=r"x_init has shape \(3, 2\); expected \(4, 2\)"):
        solvers.edm_heun_sample(key, sde, score_fn, shape, 4, x_init=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T=1.0\), got 0.0"):
        solvers.time_grid(sde, 4, 0.0)


@pytest.mark.parametrize("sampler,denoise_to_zero", [("ddim", False), ("dpm3m", False), ("heun", False), ("heun", True)])
def test_nfe_counts_score_evaluations(sampler, denoise_to_zero):
    sde = SDES["vp"]
    exact = exact_score_fn(sde, MIXTURES["rings2d"])
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))  # runs once per evaluation, inside scan too
        return exact(x, t)

    num_steps = 5
    x = jax.jit(lambda key: SAMPLERS[sampler](
        key, sde, counting_score, (8, 2), num_steps, denoise_to_zero=denoise_to_zero))(jax.random.PRNGKey(0))
    jax.block_until_ready(x)
    name = {"ddim": "ddim", "dpm3m": "dpm_solver", "heun": "edm_heun"}[sampler]
    assert len(calls) == solvers.nfe(name, num_steps)


def test_deterministic_given_noise_and_stochastic_with_eta():
    sde = SDES["vp"]
    score_fn = exact_score_fn(sde, MIXTURES["rings2d"])
    x_init = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    run = jax.jit(lambda key, eta: solvers.ddim_sample(key, sde, score_fn, (64, 2), 8, eta, x_init=x_init))
    np.testing.assert_array_equal(run(jax.random.PRNGKey(1), 0.0), run(jax.random.PRNGKey(2), 0.0))
    assert float(jnp.max(jnp.abs(run(jax.random.PRNGKey(1), 1.0) - run(jax.random.PRNGKey(2), 1.0)))) > 0.1


def test_differentiable_and_vmappable_over_the_sde():
    # Gradients flow through the multistep weights (no NaN from unused warm-up
    # placeholders), and a traced SDE parameter (an ablation over beta_max) gives
    # the same samples as each value run on its own. Data N(0, I): score -x / (alpha^2 + sigma^2).
    x_init = jax.random.normal(jax.random.PRNGKey(0), (16, 2))

    def run(beta_max, x):
        sde = sde_lib.VPSDE(beta_max=beta_max)

        def score_fn(x, t):
            alpha, sigma = sde.marginal_coeffs(t)
            return -x / (alpha**2 + sigma**2)[:, None]

        return solvers.dpm_solver_sample(jax.random.PRNGKey(1), sde, score_fn, x.shape, 6, x_init=x)

    grad = jax.grad(lambda x: jnp.sum(run(20.0, x) ** 2))(x_init)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0
    batched = jax.jit(jax.vmap(run, in_axes=(0, None)))(jnp.array([15.0, 20.0]), x_init)
    np.testing.assert_allclose(batched[1], jax.jit(run, static_argnums=0)(20.0, x_init), rtol=1e-4, atol=1e-4)


# ---- identities where theory says two methods coincide -----------------------------------


def test_ddim_eta0_is_first_order_dpm_solver():
    # Both are x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D (Lu et al. 2022, eq. 3.7).
    ddim = _sample("ddim", "vp", "rings2d", 10)
    dpm1 = _sample("dpm1", "vp", "rings2d", 10)
    assert _rel_err(ddim, dpm1) < 1e-5  # float32 round-off only


def test_ddim_eta0_is_euler_on_the_probability_flow_in_scaled_variables():
    """DDIM eta = 0 is Euler's method for the probability-flow ODE (Song et al. 2021,
    eq. 13) rewritten in y = x / alpha against s = sigma / alpha (Song et al. 2020,
    DDIM eq. 14). The field is built from `samplers.probability_flow` and the chain rule,
    and integrated by `integrate.solve_ode`'s Euler on the same grid in s."""
    sde, score_fn, x_init, _ = _problem("vp", "rings2d")
    flow = samplers.probability_flow(sde, score_fn)
    ts = solvers.time_grid(sde, 10, EPS, "logsnr")
    alphas, sigmas = sde.marginal_coeffs(ts)

    def field(y, s):
        t = solvers.t_from_log_snr(sde, -jnp.log(s), EPS, sde.T)
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(sde.marginal_coeffs, (t,), (jnp.ones_like(t),))
        dy_dt = flow(alpha * y, t) / alpha - y * dalpha / alpha
        ds_dt = (dsigma * alpha - sigma * dalpha) / alpha**2
        return dy_dt / ds_dt

    y, nfe = jax.jit(lambda y0: integrate.solve_ode(
        field, y0, sigmas[0] / alphas[0], sigmas[-1] / alphas[-1], method="euler", ts=sigmas / alphas))(
        x_init / alphas[0])
    assert nfe == 10
    ddim = _sample("ddim", "vp", "rings2d", 10)
    # t(s) is recovered numerically and the ODE field differs from DDIM's update by
    # round-off in the chain rule: agreement to 1e-4 is 3 orders below the step error.
    assert _rel_err(alphas[-1] * y, ddim) < 1e-4


def test_probability_flow_euler_converges_at_first_order_like_ddim():
    # As the steps double both DDIM and Euler in t on the probability-flow ODE reach the
    # adaptive solution, each halving its error (DDIM's ratio is checked with the orders).
    sde, score_fn, x_init, ref = _problem("vp", "rings2d")
    euler = lambda n: jax.jit(lambda x: samplers.ode_sample(
        None, sde, score_fn, x.shape, method="euler", num_steps=n, eps=EPS, x_init=x)[0])(x_init)
    ratio = _rel_err(euler(20), ref) / _rel_err(euler(40), ref)
    assert 2**0.5 <= ratio <= 2**1.5, ratio


def test_denoise_to_zero_ends_with_the_denoised_prediction():
    # With denoise_to_zero the first num_steps - 1 steps walk the grid of num_steps
    # points down to eps, then x_0 = alpha(0) D(x_eps, eps) (alpha(0) = 1 here).
    sde, score_fn, _, _ = _problem("vp", "rings2d")
    last = _sample("dpm3m", "vp", "rings2d", 20)
    denoised = _sample("dpm3m", "vp", "rings2d", 21, denoise_to_zero=True)
    expected = denoiser_from_score(sde, score_fn)(last, jnp.full((NUM,), EPS))
    assert _rel_err(denoised, expected) < 1e-5


def test_edm_heun_denoise_to_zero_converges_at_second_order():
    # Karras et al. 2022, Alg. 1 exactly (Heun, then Euler to sigma = 0) approaches
    # D(x_ref, eps), the denoised ODE solution; D is smooth, so at second order.
    sde, score_fn, _, ref = _problem("vp", "rings2d")
    target = denoiser_from_score(sde, score_fn)(ref, jnp.full((NUM,), EPS))
    err = [_rel_err(_sample("heun", "vp", "rings2d", n, "edm", True), target) for n in (10, 20)]
    assert err[0] / err[1] >= 2**1.5, err


# ---- orders of convergence -----------------------------------------------------------------

# (sampler, order, step counts n -> 2n) on the VP 2-D rings, log-SNR grid. The error
# ratio when the steps double must be >= 2^(order - 1/2): the asymptotic 2^order
# less a sqrt(2) margin for what is still not asymptotic at these step counts (the
# lower-order warm-up steps and the O(h) variation of the error constant; measured
# ratios are 1.8 (DDIM), 4.1 (2M), 6.8 and 8.1 (3M), 4.3 (Heun)).
ORDER_CASES = [("ddim", 1, 20), ("dpm2m", 2, 20), ("dpm3m", 3, 20), ("dpm3m", 3, 40), ("heun", 2, 20)]


@pytest.mark.parametrize("sampler,order,n", ORDER_CASES)
def test_each_solver_shows_its_order(sampler, order, n):
    ratio = _err(sampler, "vp", "rings2d", n) / _err(sampler, "vp", "rings2d", 2 * n)
    assert ratio >= 2 ** (order - 0.5), ratio
    # ... and not the next order up, so the check can tell orders apart.
    assert ratio < 2 ** (order + 0.5), ratio


def test_third_order_on_ve():
    ratio = _err("dpm3m", "ve", "rings2d", 40) / _err("dpm3m", "ve", "rings2d", 80)
    assert ratio >= 2**2.5, ratio


# ---- accuracy per NFE ------------------------------------------------------------------------


def _check_beats_ddim(mix_name):
    for nfe in (10, 20, 40):
        ddim = _err("ddim", "vp", mix_name, nfe)
        for sampler in ("dpm2m", "dpm3m"):
            assert _err(sampler, "vp", mix_name, nfe) < ddim, (sampler, nfe)
    # Heun spends two NFE per step; it overtakes DDIM only from about 19 NFE (at 11
    # and 15 NFE DDIM is the more accurate on both mixtures, see docs/solvers_oracle.md).
    # Its n steps cost 2n - 1 NFE; DDIM gets 2n here, one more.
    for heun_steps in (12, 20):
        heun = _err("heun", "vp", mix_name, heun_steps)
        assert heun < _err("ddim", "vp", mix_name, 2 * heun_steps), ("heun", heun_steps)


def test_high_order_solvers_beat_ddim_at_equal_nfe():
    _check_beats_ddim("rings2d")


@pytest.mark.slow
def test_high_order_solvers_beat_ddim_at_equal_nfe_in_64d():
    _check_beats_ddim("mix64d")


@pytest.mark.parametrize("mix_name,nfe_budget", [("rings2d", 24), ("mix64d", 34)])
def test_dpm_solver_3m_reaches_one_percent_within_budget(mix_name, nfe_budget):
    # Budgets: the NFE k-diffusion's best sampler needed for 1% on these problems.
    assert _err("dpm3m", "vp", mix_name, nfe_budget) < 0.01


# ---- stochastic DDIM against exact samples ----------------------------------------------------

NUM_EXACT = 20_000  # component-weight TV noise ~0.007 at this size, well under 0.02


def test_stochastic_ddim_reproduces_the_mixture():
    """eta = 1 is ancestral sampling; judged like tests/test_diffusion_oracle.py:
    sliced Wasserstein within 1.5x of two exact sets' distance, weights within 0.02 TV.
    128 random directions resolve a 2-D law well and keep the sorting cheap."""
    sde, mixture = SDES["vp"], MIXTURES["rings2d"]
    x = jax.jit(lambda key: solvers.ddim_sample(
        key, sde, exact_score_fn(sde, mixture), (NUM_EXACT, 2), 100, eta=1.0))(jax.random.PRNGKey(3))
    assert bool(jnp.all(jnp.isfinite(x)))
    ref_a = mixture.sample(jax.random.PRNGKey(101), NUM_EXACT)
    ref_b = mixture.sample(jax.random.PRNGKey(102), NUM_EXACT)
    swd = functools.partial(metrics.sliced_wasserstein, jax.random.PRNGKey(5), num_projections=128)
    assert float(swd(x, ref_a)) <= 1.5 * float(swd(ref_a, ref_b))
    labels = np.asarray(jnp.argmax(mixture.responsibilities(x), axis=1))
    freq = np.bincount(labels, minlength=mixture.num_components) / NUM_EXACT
    weights = np.asarray(mixture.weights_K) / float(np.sum(mixture.weights_K))
    assert float(metrics.total_variation(freq, weights)) <= 0.02
