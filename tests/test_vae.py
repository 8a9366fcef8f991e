"""The Gaussian VAE (genjax/vae): the bounds against a linear-Gaussian model whose
marginal is known in closed form (probabilistic PCA, Tipping & Bishop 1999), the
categorical likelihood's normalization, the whole model's IWAE bound against its
exact marginal by quadrature over a 1-D latent, the loss's beta / free-bits
terms, bad values, and a tiny run through experiments.main."""
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_vae
from experiments import main, registry
from experiments.configuration import ConfigError
from genjax.vae import bounds, likelihood
from genjax.vae import model as vae_lib
from genjax.vae import nets as vae_nets
from genjax.data import images as images_lib

# ----------------------------------------------------------------------------- pPCA oracle
# x = W z + mu + sigma eps, z ~ N(0, I_L): p(x) = N(mu, W W^T + sigma^2 I). With W's
# columns orthogonal (W = U diag(s), U orthonormal), the posterior
# N(M^-1 W^T (x - mu), sigma^2 M^-1), M = W^T W + sigma^2 I = diag(s^2 + sigma^2), is
# a diagonal Gaussian, i.e. in the family the encoder outputs.
D, L, SIGMA = 6, 3, 0.5


def ppca():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(D, L)))
    s = np.array([2.0, 1.2, 0.7])
    w = (u * s).astype(np.float32)
    mu = rng.normal(size=D).astype(np.float32)
    x = (rng.normal(size=(20, L)) @ w.T + mu + SIGMA * rng.normal(size=(20, D))).astype(np.float32)
    cov = w @ w.T + SIGMA**2 * np.eye(D)
    diff = x - mu
    log_px = -0.5 * (np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
                     + np.linalg.slogdet(cov)[1] + D * math.log(2 * math.pi))
    post_var = SIGMA**2 / (s**2 + SIGMA**2)
    post_mean = diff @ w / (s**2 + SIGMA**2)

    def log_likelihood(z, x):
        return bounds.gaussian_log_density(x, z @ jnp.asarray(w).T + mu, jnp.full((D,), math.log(SIGMA)))

    exact = lambda _: (jnp.asarray(post_mean, jnp.float32),  # noqa: E731
                       jnp.broadcast_to(jnp.asarray(0.5 * np.log(post_var), jnp.float32), post_mean.shape))
    return x, log_px, log_likelihood, exact, (w, mu, post_mean, post_var)


def test_exact_posterior_makes_every_bound_equal_log_px():
    """With q = p(z|x), every weight p(x, z)/q(z|x) is p(x): L_1 = L_k = log p(x) for
    every draw (float32 tolerance)."""
    x, log_px, log_lik, exact, _ = ppca()
    for k in (1, 7, 250):
        got = jax.jit(lambda key, x: bounds.importance_weighted_bound(key, exact, log_lik, x, num_samples=k,
                                                                      chunk_size=40))(jax.random.PRNGKey(k), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), log_px, rtol=0, atol=2e-4)


def test_elbo_with_closed_form_kl_equals_log_px_for_the_exact_posterior():
    """E_q[log p(x|z)] - KL = log p(x) when q is the posterior; the Monte Carlo ELBO
    over S draws is within 5 standard errors (std of log p(x|z) under q, by a
    separate draw) of it."""
    x, log_px, log_lik, exact, _ = ppca()
    S = 4000
    got = np.asarray(jax.jit(lambda key, x: bounds.elbo(key, exact, log_lik, x, num_samples=S))(
        jax.random.PRNGKey(0), jnp.asarray(x)))
    mean, log_std = exact(None)
    z = bounds.reparameterize(jax.random.PRNGKey(1), mean, log_std, 500)
    spread = np.asarray(jnp.std(jax.vmap(lambda zz: log_lik(zz, jnp.asarray(x)))(z), axis=0))
    assert np.all(np.abs(got - log_px) < 5 * spread / math.sqrt(S) + 1e-4), (got - log_px, spread)


def test_iwae_bound_is_below_log_px_and_rises_with_k_for_another_encoder():
    """q with the posterior's mean shifted by 0.7 posterior std and std x 1.6: the
    average of R independent draws of L_k over 20 points lies below log p(x) and rises
    with k = 1, 10, 100. Each comparison must hold by more than 4 standard errors of
    the difference of averages (std over repeats / sqrt(R)); L_1's average must also
    match the closed-form ELBO of this q within 4 standard errors."""
    x, log_px, log_lik, _, (w, mu, post_mean, post_var) = ppca()
    post_std = np.sqrt(post_var)
    q_mean = post_mean + 0.7 * post_std
    q_log_std = np.broadcast_to(np.log(1.6 * post_std), post_mean.shape)
    encode = lambda _: (jnp.asarray(q_mean, jnp.float32), jnp.asarray(q_log_std, jnp.float32))  # noqa: E731
    R = 300
    xj = jnp.asarray(x)

    def averages(k):
        draws = jax.jit(jax.vmap(lambda key: bounds.importance_weighted_bound(key, encode, log_lik, xj, num_samples=k,
                                                                      chunk_size=50)))(
            jax.random.split(jax.random.PRNGKey(k), R))
        per_repeat = np.asarray(jnp.mean(draws, axis=1), np.float64)  # average over the 20 points
        return per_repeat.mean(), per_repeat.std() / math.sqrt(R)

    target = float(log_px.mean())
    results = {k: averages(k) for k in (1, 10, 100)}
    prev = None
    for k, (avg, se) in results.items():
        assert target - avg > 4 * se, (k, avg, se, target)
        if prev is not None:
            assert avg - prev[0] > 4 * math.hypot(se, prev[1]), (k, avg, prev)
        prev = (avg, se)
    # closed form ELBO: E_q log N(x; W z + mu, s^2 I) = log N(x; W m + mu, s^2 I) - tr(W S W^T) / (2 s^2)
    q_var = np.exp(2 * q_log_std)
    resid = x - q_mean @ w.T - mu
    expected_ll = (-0.5 * np.sum(resid**2, 1) / SIGMA**2 - D * math.log(SIGMA) - 0.5 * D * math.log(2 * math.pi)
                   - 0.5 * np.sum(q_var * np.sum(w**2, 0), 1) / SIGMA**2)
    kl = np.sum(0.5 * (q_mean**2 + q_var - 1) - q_log_std, 1)
    avg1, se1 = results[1]
    assert abs(avg1 - float(np.mean(expected_ll - kl))) < 4 * se1 + 1e-4


def test_chunked_bound_equals_the_unchunked_logsumexp():
    """Chunks with a padded last chunk give log (1/k) sum_i w_i of the same draws."""
    x, _, log_lik, _, (w, mu, post_mean, post_var) = ppca()
    encode = lambda _: (jnp.asarray(post_mean + 0.3, jnp.float32),  # noqa: E731
                        jnp.asarray(np.broadcast_to(np.log(np.sqrt(post_var) * 1.3), post_mean.shape), jnp.float32))
    key = jax.random.PRNGKey(3)
    got = bounds.importance_weighted_bound(key, encode, log_lik, jnp.asarray(x), num_samples=23, chunk_size=10)
    mean, log_std = encode(None)
    log_w = jnp.concatenate([bounds.log_importance_weights(
        bounds.reparameterize(jax.random.fold_in(key, c), mean, log_std, 10), mean, log_std, log_lik,
        jnp.asarray(x)) for c in range(3)])[:23]
    want = jax.scipy.special.logsumexp(log_w, axis=0) - math.log(23)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-4)


def test_kl_to_standard_normal_matches_the_gaussian_formula():
    mean, log_std = jnp.array([0.3, -1.2]), jnp.array([0.1, -0.7])
    var = np.exp(2 * np.asarray(log_std))
    want = 0.5 * (var + np.asarray(mean) ** 2 - 1 - np.log(var))
    np.testing.assert_allclose(np.asarray(bounds.kl_to_standard_normal(mean, log_std)), want, rtol=1e-6)


# ----------------------------------------------------------------------------- discrete likelihood

def test_categorical_likelihood_sums_to_one_over_all_images():
    """Two pixels of 17 levels: P(x|z) summed over all 17^2 images is 1."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 2, 1, 17)) * 3
    images = np.array(list(itertools.product(range(17), repeat=2)), np.int32).reshape(-1, 1, 2, 1)
    log_p = likelihood.categorical_log_likelihood(jnp.broadcast_to(logits, (len(images),) + logits.shape[1:]),
                                                  jnp.asarray(images))
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(log_p))), 1.0, rtol=1e-5)


def test_levels_and_cell_centres_round_trip():
    levels = jnp.arange(17)
    np.testing.assert_array_equal(np.asarray(likelihood.levels_of(images_lib.level_centres(levels, 17), 17)),
                                  np.arange(17))
    assert images_lib.log_cell_volume((8, 8, 1), 17) == pytest.approx(64 * math.log(2 / 17))


def tiny_vae(latent_dim=1, shape=(2, 2, 1), num_levels=3):
    return vae_lib.VAE(
        encoder=vae_nets.GaussianEncoder(latent_dim=latent_dim, channels=(4,), hidden=8),
        decoder=vae_nets.LatentDecoder(image_shape=shape, num_levels=num_levels, channels=(4,), hidden=8),
        data_shape=shape, num_levels=num_levels, latent_dim=latent_dim)


def test_model_log_prob_bounds_the_exact_marginal_and_the_marginal_normalizes():
    """A VAE with a 1-D latent on 2x2 images of 3 levels (81 images): P(x) =
    integral P(x|z) N(z) dz by quadrature (6001 nodes) sums to 1 over
    all images, and the model's log_prob + D log(2/L) (one draw of the IWAE bound,
    k = 2000) is log P(x) up to the bound's gap and Monte Carlo error: within 0.3
    nats for every image, and below it on average over the 81 images (the mean gap
    exceeds -3 standard errors). A wrong prior, encoder density or cell volume
    shifts every image by far more than 0.3 nats."""
    vae = tiny_vae()
    model = vae_lib.make_vae_model(vae, num_importance_samples=2000, importance_chunk_size=500)
    images = np.array(list(itertools.product(range(3), repeat=4)), np.int32).reshape(-1, 2, 2, 1)
    y = images_lib.level_centres(jnp.asarray(images), 3)
    params = model.init(jax.random.PRNGKey(0), y)
    # sharpen the decoder's dependence on z, so the posterior is not the prior
    params["decoder"] = jax.tree_util.tree_map(lambda p: 3.0 * p, params["decoder"])
    # the rectangle rule on a fine grid over [-9, 9] (P(x|z) is sharp in z here:
    # Gauss-Hermite with 120 nodes was off by 0.1 nats)
    nodes = np.linspace(-9.0, 9.0, 6001)
    log_weights = -0.5 * nodes**2 - 0.5 * math.log(2 * math.pi) + math.log(nodes[1] - nodes[0])
    log_lik = jax.jit(lambda params: jax.lax.map(lambda z: vae_lib.log_likelihood_fn(vae, params, y)(jnp.full((len(images), 1), z)),
                          jnp.asarray(nodes, jnp.float32), batch_size=1000))(params)
    log_px = np.asarray(jax.scipy.special.logsumexp(log_lik + jnp.asarray(log_weights, jnp.float32)[:, None],
                                                    axis=0))
    np.testing.assert_allclose(np.exp(log_px).sum(), 1.0, rtol=1e-4)
    bound = np.asarray(jax.jit(model.log_prob)(params, jax.random.PRNGKey(1), y)) + images_lib.log_cell_volume((2, 2, 1), 3)
    gap = log_px - bound
    assert np.all(np.abs(gap) < 0.3), gap
    assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap)), gap
    assert np.ptp(log_px) > 1.0  # the images' probabilities differ: the check is not of a uniform model


def test_log_prob_is_the_same_anywhere_in_a_cell():
    """The model is of the discrete image: two dequantizations of x get one value."""
    vae = tiny_vae(latent_dim=2)
    model = vae_lib.make_vae_model(vae, num_importance_samples=5)
    levels = jnp.asarray(np.random.default_rng(0).integers(0, 3, (4, 2, 2, 1)), jnp.int32)
    low, high = -1 + 2 * levels / 3 + 1e-3, -1 + 2 * (levels + 1) / 3 - 1e-3
    params = model.init(jax.random.PRNGKey(0), low)
    key = jax.random.PRNGKey(2)
    log_prob = jax.jit(model.log_prob)
    np.testing.assert_array_equal(np.asarray(log_prob(params, key, low)), np.asarray(log_prob(params, key, high)))


# ----------------------------------------------------------------------------- loss, encode, decode

def test_loss_is_negative_elbo_and_beta_and_free_bits_change_only_the_kl_term():
    vae = tiny_vae(latent_dim=3)
    y = images_lib.level_centres(jnp.asarray(np.random.default_rng(1).integers(0, 3, (8, 2, 2, 1))), 3)
    base = vae_lib.make_vae_model(vae)
    params = base.init(jax.random.PRNGKey(0), y)
    key = jax.random.PRNGKey(4)
    value, m = jax.jit(base.loss)(params, key, y)
    np.testing.assert_allclose(float(value), -float(m["elbo"]), rtol=1e-6)
    np.testing.assert_allclose(float(m["elbo"]), -float(m["reconstruction_nll"]) - float(m["kl"]), rtol=1e-6)
    beta_value, _ = jax.jit(vae_lib.make_vae_model(vae, kl_weight=0.25).loss)(params, key, y)
    np.testing.assert_allclose(float(beta_value), float(m["reconstruction_nll"]) + 0.25 * float(m["kl"]), rtol=1e-6)
    # a floor above every dimension's KL: the KL term is latent_dim * lambda
    fb_value, _ = jax.jit(vae_lib.make_vae_model(vae, free_bits=50.0).loss)(params, key, y)
    np.testing.assert_allclose(float(fb_value), float(m["reconstruction_nll"]) + 3 * 50.0, rtol=1e-6)


def test_encode_and_decode_are_public_and_consistent():
    vae = tiny_vae(latent_dim=2)
    model = vae_lib.make_vae_model(vae)
    y = images_lib.level_centres(jnp.asarray(np.random.default_rng(2).integers(0, 3, (5, 2, 2, 1))), 3)
    params = model.init(jax.random.PRNGKey(0), y)
    mean, log_std = vae_lib.encode(vae, params, y)
    assert mean.shape == log_std.shape == (5, 2)
    images = vae_lib.decode(vae, params, mean)
    assert images.shape == (5, 2, 2, 1)
    logits = vae_lib.decoder_logits(vae, params, mean)
    np.testing.assert_array_equal(np.asarray(likelihood.levels_of(images, 3)),
                                  np.asarray(jnp.argmax(logits, -1)))
    drawn = vae_lib.decode(vae, params, mean, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(images_lib.level_centres(likelihood.levels_of(drawn, 3), 3)),
                                  np.asarray(drawn))


def test_bad_values_name_the_value_and_what_was_expected():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"kl_weight=-1.0; expected a finite number >= 0"):
        vae_lib.make_vae_model(vae, kl_weight=-1.0)
    with pytest.raises(ValueError, match=r"free_bits=nan"):
        vae_lib.make_vae_model(vae, free_bits=float("nan"))
    with pytest.raises(ValueError, match=r"num_importance_samples must be a Python int >= 1, got 0"):
        vae_lib.make_vae_model(vae, num_importance_samples=0)
    config = digits_vae.get_config()
    source = registry.build_source_for(config)
    with config.unlocked():
        config.model.channels = (8, 8, 8, 8)
    with pytest.raises(ConfigError, match=r"model.channels=\(8, 8, 8, 8\).*divisible by 16"):
        registry.build_model(config, source)
    config = digits_vae.get_config()
    with config.unlocked():
        config.model.kl_weight = -0.5
    with pytest.raises(ConfigError, match=r"kl_weight=-0.5"):
        registry.build_model(config, source)


# ----------------------------------------------------------------------------- end to end

def tiny_config():
    c = digits_vae.get_config()
    c.model.latent_dim = 4
    c.model.channels = (8,)
    c.model.hidden = 16
    c.optim.warmup_steps = 0
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.sample.num = 8
    c.eval.num = 8
    c.eval.num_importance_samples = 20
    c.eval.importance_chunk_size = 8
    c.eval.iwae_num_samples = (1, 20)
    return c


@pytest.mark.slow  # trains, samples and evaluates through experiments.main (~30 s)
def test_tiny_vae_run_trains_samples_and_reports_bounds(tmp_path):
    config = tiny_config()
    wd = str(tmp_path / "run")
    main.train(config, wd, progress=False)
    samples = main.sample(config, wd, verbose=False)
    assert samples.shape == (8, 8, 8, 1)
    # samples are cell centres of 17 levels
    np.testing.assert_allclose(np.asarray(images_lib.level_centres(likelihood.levels_of(samples, 17), 17)), samples,
                               rtol=0, atol=1e-6)
    result = main.evaluate(config, wd, verbose=False)
    with open(f"{wd}/eval.json") as f:
        assert json.load(f)["iwae_bounds"] == result["iwae_bounds"]
    bounds_ = result["iwae_bounds"]
    assert set(bounds_) == {"k=1", "k=20"}
    # the headline is the k = eval.num_importance_samples bound (computed once)
    assert result["nll_nats"] == bounds_["k=20"]["nll_upper_bound_nats"]
    # -log P of a discrete image is >= 0, and an untrained 17-level model is near 64 ln 17
    assert 0 < result["nll_nats"] < 64 * math.log(17) + 20
