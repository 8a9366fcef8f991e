"""Tests for genjax/scaling.py: Chinchilla fits, bootstrap, frontier, Kaplan fits.

Speed: the paper's 4500-start grid costs about 90 CPU-seconds per fit, so the
fits here start from 4 points of that grid; each test that relies on this also
checks the fit reaches an objective no worse than the true parameters', which
fails if the small grid missed the optimum's basin.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from genjax import scaling

F32_EPS = float(np.finfo(np.float32).eps)

# 4 of the paper's 4500 starts (Hoffmann et al. 2022, D.2).
SMALL_GRID = scaling.init_grid(
    alphas=(0.5,), betas=(0.5,), es=(0.0,), a_s=(0.0, 10.0), b_s=(0.0, 10.0)
)

KNOWN = scaling.ChinchillaLaw(E=1.8, A=300.0, B=500.0, alpha=0.35, beta=0.3)
CHINCHILLA = scaling.ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _factorial_grid(N_values, D_values):
    N, D = np.meshgrid(N_values, D_values)
    return N.ravel(), D.ravel()


def _theta(law):
    return jnp.array(
        [np.log(law.A), np.log(law.B), np.log(law.E), law.alpha, law.beta], jnp.float32
    )


def _lad_standard_errors(law, N, D, noise_std):
    """Asymptotic standard errors of (log A, log B, log E, alpha, beta).

    Gauss-Newton covariance sigma^2 (J^T J)^-1 of log L; the Huber fit with
    delta = 1e-3 far below sigma is a least-absolute-deviation fit, whose
    variance under Gaussian noise is pi/2 times larger.
    """
    log_N, log_D = jnp.log(jnp.asarray(N, jnp.float32)), jnp.log(jnp.asarray(D, jnp.float32))

    def log_pred(theta):
        a, b, e, alpha, beta = theta
        return jnp.logaddexp(jnp.logaddexp(a - alpha * log_N, b - beta * log_D), e)

    J = np.asarray(jax.jacfwd(log_pred)(_theta(law)), np.float64)
    cov = np.linalg.inv(J.T @ J) * noise_std**2 * np.pi / 2
    return np.sqrt(np.diag(cov))


def _objective_at(law, N, D, L):
    return float(
        scaling.chinchilla_objective(
            _theta(law), jnp.log(jnp.asarray(N, jnp.float32)),
            jnp.log(jnp.asarray(D, jnp.float32)), jnp.log(L),
        )
    )


# (a) recovery of a known law, and bootstrap intervals around it.

NOISE_A = 0.005  # 0.5% multiplicative noise on each final loss


@pytest.fixture(scope="module")
def known_data():
    N, D = _factorial_grid(np.geomspace(1e6, 1e9, 8), np.geomspace(1e8, 1e11, 8))
    L = scaling.synthetic_losses(jax.random.key(0), KNOWN, N, D, noise_std=NOISE_A)
    fit = scaling.fit_chinchilla(N, D, L, inits=SMALL_GRID)
    return N, D, L, fit


def test_fit_recovers_known_law(known_data):
    N, D, L, fit = known_data
    assert float(fit.loss) <= _objective_at(KNOWN, N, D, L)
    se = _lad_standard_errors(KNOWN, N, D, NOISE_A)
    # 4 standard errors: a miss by chance has probability ~6e-5 per parameter.
    # Here se(alpha), se(beta), se(log E) are about 0.005, 0.006, 0.010.
    assert abs(float(fit.alpha) - KNOWN.alpha) <= 4 * se[3]
    assert abs(float(fit.beta) - KNOWN.beta) <= 4 * se[4]
    assert abs(float(jnp.log(fit.E)) - np.log(KNOWN.E)) <= 4 * se[2]
    assert abs(float(jnp.log(fit.A)) - np.log(KNOWN.A)) <= 4 * se[0]
    assert abs(float(jnp.log(fit.B)) - np.log(KNOWN.B)) <= 4 * se[1]


def test_fit_no_worse_than_scipy_lbfgsb(known_data):
    # Same objective and starts, a reference optimiser (float64 iterates).
    N, D, L, fit = known_data
    log_N, log_D, log_L = (jnp.log(jnp.asarray(v, jnp.float32)) for v in (N, D, L))
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda t: scaling.chinchilla_objective(t, log_N, log_D, log_L))
    )

    def fun(theta):
        v, g = value_and_grad(jnp.asarray(theta, jnp.float32))
        return float(v), np.asarray(g, np.float64)

    best = min(
        scipy.optimize.minimize(fun, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B").fun
        for x0 in SMALL_GRID
    )
    # 1e-6 relative: float32 rounding of a sum of 64 terms.
    assert float(fit.loss) <= best * (1 + 1e-6)


def _bootstrap(known_data, seed):
    N, D, L, fit = known_data
    return scaling.bootstrap_chinchilla(
        jax.random.key(seed), N, D, L, num_samples=100, start=fit, level=0.99
    )


def test_bootstrap_intervals_cover_truth(known_data):
    N, D, L, fit = known_data
    boot = _bootstrap(known_data, seed=1)
    a_true, b_true = scaling.frontier_exponents(KNOWN)
    truth = dict(KNOWN._asdict(), a=a_true, b=b_true)
    # With 100 resamples at level 0.99, all seven intervals held the truth for
    # 38 of 40 independent noise draws (and bootstrap seeds) when this test was
    # designed; the fit's own errors had standard deviation 1.0 +- 0.06 in units
    # of the asymptotic standard errors, so those are the right yardstick.
    for name, value in truth.items():
        assert float(boot.low[name]) <= value <= float(boot.high[name]), name
    # Informative intervals: at most twice the normal-theory 99% width
    # 2 * 2.576 se (over the 40 draws above the widest was 7.3 se).
    se = _lad_standard_errors(KNOWN, N, D, NOISE_A)
    assert float(boot.high["alpha"] - boot.low["alpha"]) <= 2 * 5.15 * se[3]
    assert float(boot.high["beta"] - boot.low["beta"]) <= 2 * 5.15 * se[4]
    assert boot.samples.alpha.shape == (100,)
    np.testing.assert_allclose(boot.a_S + boot.b_S, 1.0, rtol=4 * F32_EPS)


def test_bootstrap_is_a_function_of_the_key(known_data):
    first, again, other = (_bootstrap(known_data, seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first.samples.alpha, again.samples.alpha)
    assert not np.array_equal(first.samples.alpha, other.samples.alpha)


# (b) data from the published Chinchilla fit.


def test_fit_lands_near_published_chinchilla_law():
    # IsoFLOP profiles as in Hoffmann et al. 2022, fig. 3: 8 budgets from 6e18 to
    # 3e21 FLOPs, 8 model sizes per budget spanning 1/6 to 6 times its optimal
    # size (eq. 4), so N runs over 3e7..2e10 and D over 9e8..1e12.
    law = CHINCHILLA
    C_B = np.geomspace(6e18, 3e21, 8)
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    N_opt_B = G * (C_B / 6) ** (law.beta / (law.alpha + law.beta))
    N = (N_opt_B[:, None] * np.geomspace(1 / 6, 6, 8)[None, :]).ravel()
    D = np.repeat(C_B, 8) / (6 * N)
    noise_std = 0.003
    L = scaling.synthetic_losses(jax.random.key(7), CHINCHILLA, N, D, noise_std=noise_std)
    fit = scaling.fit_chinchilla(N, D, L, inits=SMALL_GRID)
    assert float(fit.loss) <= _objective_at(CHINCHILLA, N, D, L)
    # On this design at 0.3% noise the asymptotic standard errors are about
    # 0.0075 (alpha), 0.0064 (beta), 0.018 (E) and 0.0062 (a), so the
    # tolerances below are at least 5 of them.
    se = _lad_standard_errors(CHINCHILLA, N, D, noise_std)
    assert 0.05 >= 6 * max(se[3], se[4]) and 0.1 >= 5 * float(CHINCHILLA.E * se[2])
    assert abs(float(fit.alpha) - 0.34) <= 0.05
    assert abs(float(fit.beta) - 0.28) <= 0.05
    assert abs(float(fit.E) - 1.69) <= 0.1
    a, b = scaling.frontier_exponents(fit)
    # Table 2 of the paper reports a = 0.46, b = 0.54 for approach 3.
    assert abs(float(a) - 0.46) <= 0.05
    assert abs(float(b) - 0.54) <= 0.05


# (c) the compute-optimal frontier.

FRONTIER_LAWS = [CHINCHILLA, KNOWN, scaling.ChinchillaLaw(E=0.5, A=50.0, B=2000.0, alpha=0.6, beta=0.25)]


@pytest.mark.parametrize("law", FRONTIER_LAWS)
def test_frontier_spends_exactly_the_budget(law):
    C = jnp.asarray(np.geomspace(1e15, 1e25, 11), jnp.float32)
    N_opt, D_opt = scaling.compute_optimal(law, C)
    # Three float32 roundings: (C / 6) / N, then * N, then * 6.
    np.testing.assert_allclose(scaling.training_flops(N_opt, D_opt), C, rtol=3 * F32_EPS)
    # D_opt is also Chinchilla's G^-1 (C/6)^b (eq. 4), in float64.
    a, b = (float(v) for v in scaling.frontier_exponents(law))
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    C64 = np.asarray(C, np.float64)
    # float32 pow of numbers up to 2e24: relative error ~ eps * |ln(C/6)| <= 56 eps.
    np.testing.assert_allclose(N_opt, G * (C64 / 6) ** a, rtol=64 * F32_EPS)
    np.testing.assert_allclose(D_opt, (C64 / 6) ** b / G, rtol=64 * F32_EPS)
    assert a + b == pytest.approx(1.0, abs=F32_EPS)


@pytest.mark.parametrize("law", FRONTIER_LAWS)
def test_frontier_minimises_loss_at_fixed_compute(law):
    # Dense search in float64 along C = 6 N D, ln N on a grid of spacing 1e-4.
    for C in (1e18, 1e21, 1e24):
        log_N = np.arange(np.log(1e2), np.log(C / 6 / 1e2), 1e-4)
        N = np.exp(log_N)
        L = law.E + law.A * N ** -law.alpha + law.B * (C / (6 * N)) ** -law.beta
        N_best = N[np.argmin(L)]
        N_opt, _ = scaling.compute_optimal(law, jnp.float32(C))
        # Within one grid step (relative 1e-4) plus float32 pow error (64 eps).
        assert abs(np.log(float(N_opt)) - np.log(N_best)) <= 1e-4 + 64 * F32_EPS


def test_frontier_exponent_is_the_log_log_slope():
    # d ln N_opt / d ln C = a exactly; checked by autodiff through compute_optimal.
    log_N_of_log_C = lambda log_C: jnp.log(scaling.compute_optimal(CHINCHILLA, jnp.exp(log_C))[0])
    slope = jax.jit(jax.grad(log_N_of_log_C))(jnp.float32(np.log(1e21)))
    a, _ = scaling.frontier_exponents(CHINCHILLA)
    assert float(slope) == pytest.approx(float(a), rel=16 * F32_EPS)


# (d) Kaplan et al. 2020 single-variable power laws.


@pytest.mark.parametrize(
    "x_c, alpha, lo, hi",
    [
        (8.8e13, 0.076, 1e6, 1e10),  # L(N), Kaplan eq. 1.1 constants
        (5.4e13, 0.095, 1e7, 1e11),  # L(D), eq. 1.2
        (3.1e8, 0.050, 1e-7, 1e1),  # L(C_min) in PF-days, eq. 1.3
    ],
)
def test_power_law_fit_is_exact_without_noise(x_c, alpha, lo, hi):
    x = np.geomspace(lo, hi, 12)
    fit = scaling.fit_power_law(x, (x_c / x) ** alpha)
    # Closed-form least squares in float32: a few roundings of ln x, and
    # x_c = exp(k / alpha) turns a relative error r in k / alpha into |ln x_c| r.
    np.testing.assert_allclose(float(fit.alpha), alpha, rtol=8 * F32_EPS)
    np.testing.assert_allclose(float(fit.x_c), x_c, rtol=8 * F32_EPS * abs(np.log(x_c)))
    assert float(fit.E) == 0.0
    # (x_c / x)^alpha inherits alpha times x_c's relative error, plus pow rounding.
    rtol = 8 * F32_EPS * (2 + alpha * abs(np.log(x_c)))
    np.testing.assert_allclose(scaling.power_law(fit, x), (x_c / x) ** alpha, rtol=rtol)


@pytest.mark.parametrize("E, A, alpha", [(1.69, 406.4, 0.34), (0.5, 3.0, 0.1)])
def test_power_law_with_offset_is_exact_without_noise(E, A, alpha):
    x = np.geomspace(1e6, 1e11, 16)
    x_c = A ** (1 / alpha)
    fit = scaling.fit_power_law(x, E + (x_c / x) ** alpha, offset=True)
    # Iterative fit: it stops once the log residuals are at float32 rounding,
    # where parameter errors are a few 1e-6 (measured); 1e-4 leaves margin.
    np.testing.assert_allclose(float(fit.E), E, rtol=1e-4)
    np.testing.assert_allclose(float(fit.alpha), alpha, rtol=1e-4)
    np.testing.assert_allclose(np.log(float(fit.x_c)), np.log(x_c), rtol=1e-4)


# (5) synthetic data.


def test_synthetic_losses_noise_model():
    N, D = _factorial_grid(np.geomspace(1e6, 1e9, 100), np.geomspace(1e8, 1e11, 100))
    clean = scaling.chinchilla_loss(KNOWN, N, D)
    noiseless = scaling.synthetic_losses(jax.random.key(0), KNOWN, N, D, noise_std=0.0)
    np.testing.assert_array_equal(noiseless, clean)
    # A large std so the log-normal shape shows: log(L / clean) must be normal.
    noise_std = 0.3
    noisy = scaling.synthetic_losses(jax.random.key(0), KNOWN, N, D, noise_std=noise_std)
    log_ratio = np.log(np.asarray(noisy, np.float64) / np.asarray(clean, np.float64))
    # 10^4 draws: standard errors are 0.7% (relative) for the std, 0.3/100 for
    # the mean and sqrt(6/n) = 0.024 for the skewness; bounds are 5 of them.
    assert np.std(log_ratio) == pytest.approx(noise_std, rel=0.035)
    assert abs(np.mean(log_ratio)) <= 5 * noise_std / 100
    z = (log_ratio - log_ratio.mean()) / log_ratio.std()
    assert abs(np.mean(z**3)) <= 5 * np.sqrt(6 / z.size)
    again = scaling.synthetic_losses(jax.random.key(0), KNOWN, N, D, noise_std=noise_std)
    np.testing.assert_array_equal(noisy, again)
    other = scaling.synthetic_losses(jax.random.key(1), KNOWN, N, D, noise_std=noise_std)
    assert not np.array_equal(noisy, other)


def test_objective_is_summed_huber_of_log_residuals():
    # Residuals on both sides of delta = 1e-3: quadratic inside, linear outside.
    N, D = np.array([1e6, 1e7, 1e8, 1e9]), np.array([1e9, 1e8, 1e10, 1e11])
    r = np.array([5e-4, -8e-4, 1e-2, -0.2])
    log_L = np.log(np.asarray(scaling.chinchilla_loss(KNOWN, N, D), np.float64)) + r
    delta = 1e-3
    expected = np.sum(np.where(np.abs(r) <= delta, r**2 / 2, delta * (np.abs(r) - delta / 2)))
    got = scaling.chinchilla_objective(
        _theta(KNOWN), jnp.log(jnp.float32(N)), jnp.log(jnp.float32(D)), jnp.float32(log_L)
    )
    # float32 log L near 1: absolute rounding ~1e-7 per residual, times delta.
    assert float(got) == pytest.approx(expected, abs=4 * 1e-7 * delta)


def test_local_inits_surround_the_law():
    starts = scaling.local_inits(KNOWN, steps=(1.0, 2.0, 0.5, 0.1, 0.2))
    assert starts.shape == (11, 5)
    np.testing.assert_allclose(starts[0], _theta(KNOWN), rtol=F32_EPS)
    offsets = np.asarray(starts[1:] - starts[0])
    # Entries of theta are below 8: adding and removing a step costs ulp(8) = 8 eps.
    np.testing.assert_allclose(offsets[:5], np.diag([1.0, 2.0, 0.5, 0.1, 0.2]), atol=8 * F32_EPS)
    np.testing.assert_allclose(offsets[5:], -offsets[:5], atol=8 * F32_EPS)


def test_chinchilla_loss_closed_form():
    L = scaling.chinchilla_loss(KNOWN, 1e8, 1e10)
    expected = 1.8 + 300.0 / 1e8**0.35 + 500.0 / 1e10**0.3
    assert float(L) == pytest.approx(expected, rel=4 * F32_EPS)


# Bad input.


def test_bad_input_raises():
    N, D = np.array([1e6, 1e7, 1e8]), np.array([1e8, 1e9, 1e10])
    L = np.array([3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match="N holds -1"):
        scaling.fit_chinchilla(np.array([-1.0, 1e7, 1e8]), D, L, inits=SMALL_GRID)
    with pytest.raises(ValueError, match="lengths differ"):
        scaling.fit_chinchilla(N, D[:2], L, inits=SMALL_GRID)
    with pytest.raises(ValueError, match="got 3 runs; expected at least 5"):
        scaling.fit_chinchilla(N, D, L, inits=SMALL_GRID)
    N, D, L = (np.geomspace(v, 10 * v, 5) for v in (1e6, 1e8, 2.0))
    with pytest.raises(ValueError, match=r"inits has shape \(4, 3\)"):
        scaling.fit_chinchilla(N, D, L, inits=jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="level is 1.5"):
        scaling.bootstrap_chinchilla(jax.random.key(0), N, D, L, start=KNOWN, level=1.5)
    with pytest.raises(ValueError, match="noise_std is -0.1"):
        scaling.synthetic_losses(jax.random.key(0), KNOWN, N, D, noise_std=-0.1)
    with pytest.raises(ValueError, match="C holds 0"):
        scaling.compute_optimal(KNOWN, jnp.array([1e20, 0.0]))
    with pytest.raises(ValueError, match="at least 3"):
        scaling.fit_power_law(N[:2], L[:2], offset=True)
    with pytest.raises(ValueError, match="alphas is empty"):
        scaling.init_grid(alphas=())
