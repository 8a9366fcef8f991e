"""Classifier-free guidance against a Gaussian mixture whose components are the
classes: the exact conditional score is the component's diffused score, the exact
unconditional one the mixture's, so the guided prediction has a closed form."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import guidance as cfg
from genjax.data import toy2d
from genjax.diffusion import solvers
from genjax.diffusion import sde as sde_lib
from genjax.diffusion.parameterization import convert_fn

# Three overlapping full-covariance classes with unequal priors, so p(c | x_t) is
# far from 0 and 1 over much of the space and its gradient is not negligible.
MIXTURE = toy2d.GaussianMixture.create(
    means_KD=[[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]],
    covs_KDD=[[[0.6, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.5]], [[0.8, 0.0], [0.0, 0.2]]],
    weights_K=[0.5, 0.3, 0.2],
)
NUM_CLASSES = MIXTURE.num_components
NULL = NUM_CLASSES  # the null label is the id after the classes
SDE = sde_lib.VPSDE()


def _component(c):
    return toy2d.GaussianMixture(MIXTURE.means_KD[c:c + 1], MIXTURE.covs_KDD[c:c + 1], jnp.ones(1))


def _exact_score(x, t, labels):
    """grad log p_t(x | c) for labels c < K, grad log p_t(x) for the null label."""
    alpha, sigma = SDE.marginal_coeffs(jnp.broadcast_to(t, (x.shape[0],)))
    scores = [_component(c).diffused_score(x, alpha, sigma) for c in range(NUM_CLASSES)]
    scores.append(MIXTURE.diffused_score(x, alpha, sigma))
    return jnp.take_along_axis(jnp.stack(scores, axis=1), labels[:, None, None], axis=1)[:, 0]


def _counting(fn):
    """fn that records the batch size of every call (eager calls only)."""
    batches = []

    def counted(x, t, labels):
        batches.append(x.shape[0])
        return fn(x, t, labels)

    return counted, batches


def _problem(n=64, seed=0):
    kx, kt, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = 1.5 * jax.random.normal(kx, (n, 2))
    t = jax.random.uniform(kt, (n,), minval=0.02, maxval=1.0)
    labels = jax.random.randint(kc, (n,), 0, NUM_CLASSES)
    return x, t, labels


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_guided_score_is_the_closed_form_in_one_batched_call(w):
    x, t, labels = _problem()
    counted, batches = _counting(_exact_score)
    got = cfg.guided(counted, labels, NULL, w)(x, t)
    # One call: batch 2N, or N at w = 0 where the unconditional half is skipped.
    assert batches == [x.shape[0] if w == 0.0 else 2 * x.shape[0]]
    score_c = _exact_score(x, t, labels)
    score_mix = _exact_score(x, t, jnp.full_like(labels, NULL))
    np.testing.assert_allclose(got, (1 + w) * score_c - w * score_mix, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_guided_score_adds_w_times_the_implicit_classifier_gradient(w):
    """score_c + w grad_x log p_t(c | x) with the posterior written from densities,
    log p_t(c | x) = log pi_c + log N_c,t(x) - log p_t(x), and differentiated by jax.grad:
    no score formula of the mixture is involved."""
    x, t, labels = _problem(seed=1)
    alpha, sigma = SDE.marginal_coeffs(t)
    pi_K = MIXTURE.weights_K / jnp.sum(MIXTURE.weights_K)

    def log_posterior(x_D, alpha, sigma, c):
        x_1D = x_D[None]
        comp = jnp.stack([_component(k).diffused_log_prob(x_1D, alpha, sigma)[0] for k in range(NUM_CLASSES)])
        return jnp.log(pi_K[c]) + comp[c] - MIXTURE.diffused_log_prob(x_1D, alpha, sigma)[0]

    grad_log_post = jax.vmap(jax.grad(log_posterior))(x, alpha, sigma, labels)
    # The posteriors are far from saturated, so this gradient is not small.
    assert float(jnp.mean(jnp.abs(grad_log_post))) > 0.1
    score_c = jax.vmap(jax.grad(lambda x_D, a, s, c: jnp.stack(
        [_component(k).diffused_log_prob(x_D[None], a, s)[0] for k in range(NUM_CLASSES)])[c]))(x, alpha, sigma, labels)
    got = cfg.guided(_exact_score, labels, NULL, w)(x, t)
    np.testing.assert_allclose(got, score_c + w * grad_log_post, rtol=1e-4, atol=1e-4)


def test_scalar_time_is_passed_through():
    x, _, labels = _problem(seed=2)
    seen = []

    def pred_fn(x, t, labels):
        seen.append(jnp.shape(t))
        return _exact_score(x, t, labels)

    got = cfg.guided(pred_fn, labels, NULL, 2.0)(x, 0.3)
    assert seen == [()]
    full = cfg.guided(_exact_score, labels, NULL, 2.0)(x, jnp.full((x.shape[0],), 0.3))
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_guidance_commutes_with_affine_parameterizations(target):
    """Guiding an eps / x0 / v network and converting to a score gives the guided
    score: the weights 1 + w and -w sum to one, so even the x-dependent offsets of
    x0 and v cancel correctly."""
    x, t, labels = _problem(seed=3)
    w = 1.5

    def pred_fn(x, t, labels):
        return convert_fn(SDE, lambda x, t: _exact_score(x, t, labels), source="score", target=target)(x, t)

    via_target = convert_fn(SDE, cfg.guided(pred_fn, labels, NULL, w), source=target, target="score")(x, t)
    direct = cfg.guided(_exact_score, labels, NULL, w)(x, t)
    np.testing.assert_allclose(via_target, direct, rtol=1e-4, atol=1e-4)


def test_traced_guidance_weights_vmap_and_jit():
    x, t, labels = _problem(seed=4)
    ws = jnp.array([0.0, 1.0, 4.0])
    batched = jax.jit(jax.vmap(lambda w: cfg.guided(_exact_score, labels, NULL, w)(x, t)))(ws)
    for k, w in enumerate([0.0, 1.0, 4.0]):
        np.testing.assert_allclose(batched[k], cfg.guided(_exact_score, labels, NULL, w)(x, t), rtol=1e-5, atol=1e-5)


def test_unguided_sampling_draws_the_class():
    """w = 0 inside a sampler is the class-conditional model: DDIM (100 steps) with every
    label c = 1 gives samples of component 1, mean within 5 standard errors
    sqrt(Sigma_dd / n) per coordinate, variances within 5 standard errors
    Sigma_dd sqrt(2 / n) (the sampler's bias at 100 steps is far below either)."""
    n, c = 4000, 1
    labels = jnp.full((n,), c)
    score_fn = cfg.guided(_exact_score, labels, NULL, 0.0)
    x = jax.jit(lambda key: solvers.ddim_sample(key, SDE, score_fn, (n, 2), 100))(jax.random.PRNGKey(5))
    mean, cov = MIXTURE.means_KD[c], MIXTURE.covs_KDD[c]
    var = jnp.diagonal(cov)
    assert bool(jnp.all(jnp.abs(jnp.mean(x, 0) - mean) < 5 * jnp.sqrt(var / n)))
    assert bool(jnp.all(jnp.abs(jnp.var(x, 0) - var) < 5 * var * math.sqrt(2.0 / n)))


# ---- label dropout ------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_labels_drops_at_rate_p(p):
    """The number dropped is Binomial(n, p): within 5 std sqrt(n p (1 - p)) of n p.
    The labels kept are the original ones."""
    n = 100_000
    labels = jax.random.randint(jax.random.PRNGKey(0), (n,), 0, NUM_CLASSES)
    out = jax.jit(lambda key: cfg.drop_labels(key, labels, NULL, p))(jax.random.PRNGKey(1))
    dropped = out == NULL
    assert abs(int(jnp.sum(dropped)) - n * p) < 5 * math.sqrt(n * p * (1 - p))
    np.testing.assert_array_equal(out[~dropped], labels[~dropped])


def test_drop_labels_edge_rates_and_vector_labels():
    labels = jnp.arange(10) % NUM_CLASSES
    key = jax.random.PRNGKey(2)
    np.testing.assert_array_equal(cfg.drop_labels(key, labels, NULL, 0.0), labels)
    np.testing.assert_array_equal(cfg.drop_labels(key, labels, NULL, 1.0), jnp.full(10, NULL))
    # One-hot labels with the all-zero vector as null: whole rows are dropped together.
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
    out = cfg.drop_labels(key, one_hot, jnp.zeros(NUM_CLASSES), 0.5)
    rows_kept = jnp.all(out == one_hot, axis=1)
    rows_null = jnp.all(out == 0, axis=1)
    assert bool(jnp.all(rows_kept | rows_null)) and 0 < int(jnp.sum(rows_null)) < 10


# ---- errors ----------------------------------------------------------------------------------


def test_check_guidance():
    assert cfg.check_guidance(0, None) == 0.0
    assert cfg.check_guidance(2.5, 10) == 2.5
    with pytest.raises(ValueError, match=r"guidance 1.0 needs a class-conditional model, but num_classes is None"):
        cfg.check_guidance(1.0, None)
    with pytest.raises(ValueError, match=r"guidance must be a finite number >= 0 .*got -0.5"):
        cfg.check_guidance(-0.5, 10)
    with pytest.raises(ValueError, match=r"guidance must be a finite number >= 0 .*got nan"):
        cfg.check_guidance(float("nan"), 10)
    with pytest.raises(ValueError, match=r"num_classes must be None or an int >= 1, got 0"):
        cfg.check_guidance(1.0, 0)


def test_bad_arguments():
    x, t, labels = _problem(seed=6)
    with pytest.raises(ValueError, match=r"p_uncond must lie in \[0, 1\], got 1.5"):
        cfg.drop_labels(jax.random.PRNGKey(0), labels, NULL, 1.5)
    with pytest.raises(ValueError, match=r"x has batch 32 but 64 labels were given"):
        cfg.guided(_exact_score, labels, NULL, 1.0)(x[:32], t[:32])
    with pytest.raises(ValueError, match=r"x has batch 32 but 64 labels were given"):
        cfg.guided(_exact_score, labels, NULL, 0.0)(x[:32], t[:32])
