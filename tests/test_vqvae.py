"""The VQ-VAE (genjax/vae/quantize.py, vqvae.py): nearest codes, the
straight-through gradient, the EMA codebook update against a hand computation,
perplexity, bad values, and a tiny run through experiments.main whose codebook
state resumes bit for bit."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_vqvae
from experiments import main
from genjax.vae import quantize
from genjax.vae import nets as vae_nets
from genjax.vae import vqvae
from genjax.data import images as images_lib


def test_nearest_codes_match_brute_force():
    rng = np.random.default_rng(0)
    z, codebook = rng.normal(size=(50, 3)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    want = np.argmin(((z[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(quantize.nearest_codes(jnp.asarray(z), jnp.asarray(codebook))), want)


def test_straight_through_passes_the_value_of_z_q_and_the_gradient_to_z_e():
    """f(z) = sum(c z^2): the forward value is f(z_q); the gradient with respect to
    z_e is f's gradient at z_q, 2 c z_q (copied through the quantizer)."""
    z_e, z_q = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.5, 1.0])
    c = jnp.array([1.0, 2.0, 3.0])
    f = lambda z: jnp.sum(c * z**2)  # noqa: E731
    value, grad = jax.value_and_grad(lambda ze: f(quantize.straight_through(ze, z_q)))(z_e)
    np.testing.assert_allclose(float(value), float(f(z_q)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(2 * c * z_q), rtol=1e-6)


def test_ema_codebook_update_against_a_hand_computation():
    """K = 3 codes in 2-D, decay 0.9, eps 0.1; z = (1,0), (3,0) -> code 0, (0,2) -> code 2;
    code 1 unused. Starting from N = (1, 1, 1), m = e:
    N = 0.9 + 0.1 n = (1.1, 0.9, 1.0), m_0 = 0.9 e_0 + 0.1 (4, 0), m_2 = 0.9 e_2 + 0.1 (0, 2),
    m_1 = 0.9 e_1; sum N = 3, N~_i = (N_i + 0.1) / (3 + 0.3) * 3; e_i = m_i / N~_i."""
    codebook = jnp.array([[2.0, 0.0], [-5.0, -5.0], [0.0, 1.0]])
    state = {"codebook": codebook, "cluster_size": jnp.ones(3), "code_sum": codebook}
    z = jnp.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    codes = quantize.nearest_codes(z, codebook)
    np.testing.assert_array_equal(np.asarray(codes), [0, 0, 2])
    new = quantize.ema_codebook_update(state, z, codes, decay=0.9, epsilon=0.1)
    n = np.array([1.1, 0.9, 1.0])
    m = np.array([[0.9 * 2 + 0.4, 0.0], [0.9 * -5, 0.9 * -5], [0.0, 0.9 * 1 + 0.2]])
    smoothed = (n + 0.1) / 3.3 * 3.0
    np.testing.assert_allclose(np.asarray(new["cluster_size"]), n, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["code_sum"]), m, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["codebook"]), m / smoothed[:, None], rtol=1e-6)


def test_perplexity_counts_the_codes_in_use():
    assert float(quantize.codebook_perplexity(jnp.arange(8) % 4, 16)) == pytest.approx(4.0, rel=1e-6)
    assert float(quantize.codebook_perplexity(jnp.zeros(10, jnp.int32), 16)) == pytest.approx(1.0, rel=1e-6)
    # usage (1/2, 1/4, 1/4): exp(H) = exp(1.5 ln 2)
    assert float(quantize.codebook_perplexity(jnp.array([0, 0, 1, 2]), 5)) == pytest.approx(2 ** 1.5, rel=1e-6)


def tiny_model(**kwargs):
    enc = vae_nets.GridEncoder(code_dim=3, channels=(4,))
    dec = vae_nets.GridDecoder(image_channels=1, num_levels=5, channels=(4,))
    return vqvae.make_vqvae_model(enc, dec, data_shape=(4, 4, 1), num_levels=5, codebook_size=6, code_dim=3,
                                  **kwargs)


def test_loss_terms_gradients_and_state():
    """The loss is reconstruction NLL + 0.25 commitment; the encoder gets a gradient
    through the straight-through estimator; the codebook is state, not a parameter,
    and the returned state is the EMA update of the batch's assignments."""
    model = tiny_model()
    y = images_lib.level_centres(jnp.asarray(np.random.default_rng(0).integers(0, 5, (8, 4, 4, 1))), 5)
    params = model.init(jax.random.PRNGKey(0), y)
    state = model.init_model_state(jax.random.PRNGKey(1), y)
    assert set(params) == {"encoder", "decoder"}
    (value, (metrics, new_state)), grads = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(
        params, jax.random.PRNGKey(2), y, state)
    np.testing.assert_allclose(float(value), float(metrics["reconstruction_nll"] + 0.25 * metrics["commitment"]),
                               rtol=1e-6)
    encoder_grad = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads["encoder"]))
    assert encoder_grad > 0
    z_e = jax.jit(vae_nets.GridEncoder(code_dim=3, channels=(4,)).apply)({"params": params["encoder"]}, y)
    z_e = z_e.reshape(-1, 3)
    codes = quantize.nearest_codes(z_e, state["codebook"])
    want = quantize.ema_codebook_update(state, z_e, codes, decay=0.99)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5),
                           new_state, want)
    assert 1.0 <= float(metrics["perplexity"]) <= 6.0
    samples = jax.jit(lambda p, k, s: model.sample(p, k, 5, model_state=s))(params, jax.random.PRNGKey(3), new_state)
    assert samples.shape == (5, 4, 4, 1)


def test_bad_values_name_the_value_and_what_was_expected():
    with pytest.raises(ValueError, match=r"codebook_decay=1.0; expected a number in \[0, 1\)"):
        tiny_model(codebook_decay=1.0)
    with pytest.raises(ValueError, match=r"commitment_weight=-0.1; expected a number >= 0"):
        tiny_model(commitment_weight=-0.1)


def tiny_config():
    c = digits_vqvae.get_config()
    c.model.channels = (8,)
    c.model.code_dim = 4
    c.model.codebook_size = 8
    c.optim.warmup_steps = 0
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.sample.num = 8
    c.eval.num = 16
    return c


@pytest.mark.slow  # two tiny runs through experiments.main, then sample and evaluate (~30 s)
def test_codebook_state_resumes_bit_identically_and_evaluates(tmp_path):
    config = tiny_config()
    full = main.train(config, str(tmp_path / "full"), progress=False)
    main.train(config, str(tmp_path / "resumed"), stop_after=10, progress=False)
    resumed = main.train(config, str(tmp_path / "resumed"), progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the codebook did move (the comparison above is of a state that changes)
    from experiments.experiment import Experiment
    initial = Experiment(config).init_state()
    assert not np.array_equal(np.asarray(initial.model_state["codebook"]), np.asarray(full.model_state["codebook"]))
    np.testing.assert_allclose(float(jnp.sum(full.model_state["cluster_size"])),
                               # sum N after t updates of M = 16 * 4 * 4 assignments: M + (K - M) 0.99^t
                               256 + (8 - 256) * 0.99**20, rtol=1e-4)
    samples = main.sample(config, str(tmp_path / "full"), verbose=False)
    assert samples.shape == (8, 8, 8, 1)
    result = main.evaluate(config, str(tmp_path / "full"), verbose=False)
    assert 1.0 <= result["test_perplexity"] <= 8.0
    assert 0.0 <= result["test_reconstruction_mse"] <= 4.0 and result["test_reconstruction_nll"] > 0
    assert "nll_nats" not in result
    assert math.isfinite(result["frechet_distance"])
