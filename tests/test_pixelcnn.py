"""Gated PixelCNN: causality and no blind spot by the Jacobian, the exact likelihood
against the chain rule evaluated pixel by pixel, sampling, range coding round
trips, the level-mismatch errors and a tiny run through experiments.main."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_pixelcnn
from experiments import main, registry
from experiments.configuration import ConfigError
from experiments.experiment import Experiment
from genjax.autoregressive import pixelcnn as pc
from genjax.data import images as images_lib
from genjax.nn.pixelcnn import PixelCNN

L = 17
SHAPE = (8, 8, 1)
D = 64


def _init(net, batch=2, conditional=False, seed=0):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (batch,) + SHAPE, minval=-1, maxval=1)
    labels = jnp.arange(batch) % 10 if conditional else None
    return net.init(jax.random.PRNGKey(seed + 1), x, labels), x, labels


def _jacobian(net, params, x_HWC, label=None):
    """J[i, j] = d <w_i, logits at pixel i> / d input pixel j (raster order), w_i random."""
    w_DL = jax.random.normal(jax.random.PRNGKey(7), (D, L))
    labels = None if label is None else jnp.array([label])

    def proj(x1):
        logits = net.apply(params, x1[None], labels)[0].reshape(D, L)
        return jnp.sum(logits * w_DL, axis=-1)

    return np.asarray(jax.jacrev(proj)(x_HWC)).reshape(D, D)


@pytest.mark.parametrize("conditional", [False, True])
def test_causal_and_no_blind_spot_by_the_jacobian(conditional):
    # Default depth and kernels (only the width is small, for speed): the
    # receptive field 3 + 8 >= 7 covers every earlier pixel of an 8x8 image.
    net = PixelCNN(num_levels=L, channels=8, head=16, num_classes=10 if conditional else None)
    params, x, _ = _init(net, conditional=conditional)
    J = _jacobian(net, params, x[0], label=3 if conditional else None)
    future = np.triu(np.ones((D, D), bool))  # j >= i
    assert np.all(J[future] == 0.0), "logits of pixel i depend on an input pixel j >= i"
    blind = np.argwhere(~future & (J == 0.0))
    assert blind.size == 0, f"blind spot: (i, j) pairs with j < i and zero gradient, e.g. {blind[:5].tolist()}"


def test_a_shallow_net_has_a_blind_spot_the_test_would_catch():
    # The check above is not vacuous: with no gated layer the first (7-wide) masked
    # layer sees only 3 rows up and 3 columns either side.
    net = PixelCNN(num_levels=L, channels=8, head=16, num_layers=0)
    params, x, _ = _init(net)
    J = _jacobian(net, params, x[0])
    past = ~np.triu(np.ones((D, D), bool))
    assert np.any(J[past] == 0.0)
    assert np.all(J[~past] == 0.0)


def test_default_construction_maps_images_to_logits_per_level():
    net = PixelCNN(num_levels=17)
    x = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(net.apply, params, x)
    assert out.shape == (3, 8, 8, 1, 17)
    with pytest.raises(ValueError, match="C = 3"):
        jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))


@pytest.mark.parametrize("conditional", [False, True])
def test_log_prob_is_the_chain_rule_evaluated_pixel_by_pixel(conditional):
    num_classes = 10 if conditional else None
    net = PixelCNN(num_levels=L, channels=8, head=16, num_layers=4, num_classes=num_classes)
    model = pc.make_pixelcnn_model(net, data_shape=SHAPE, num_levels=L, num_classes=num_classes)
    B = 3
    x_int = jax.random.randint(jax.random.PRNGKey(3), (B,) + SHAPE, 0, L)
    labels = jnp.array([1, 4, 9]) if conditional else None
    params = model.init(jax.random.PRNGKey(0), {"x": images_lib.level_centres(x_int, L), "label": labels}
                        if conditional else images_lib.level_centres(x_int, L))
    # p(x_i | x_<i): the net sees pixels < i and random junk at pixels >= i
    junk = jax.random.randint(jax.random.PRNGKey(4), (D, B) + SHAPE, 0, L).reshape(D, B, D)
    before = jnp.arange(D)[None, :] < jnp.arange(D)[:, None]  # [i, j]: j < i
    partial = jnp.where(before[:, None, :], x_int.reshape(1, B, D), junk).reshape(D * B, *SHAPE)
    lab = None if labels is None else jnp.tile(labels, D)
    logits = net.apply(params, images_lib.level_centres(partial, L), lab).reshape(D, B, D, L)
    logp_i = jax.nn.log_softmax(logits, -1)[jnp.arange(D), :, jnp.arange(D), :]  # (D, B, L)
    chain = jnp.take_along_axis(logp_i, x_int.reshape(B, D).T[..., None], -1)[..., 0].sum(0)
    # log_prob of the dequantized images (any u) is log P(x) - D log(2/L)
    y, log_volume = images_lib.to_model_space(jax.random.PRNGKey(5), x_int, L)
    lp = model.log_prob(params, None, y, labels=labels)
    np.testing.assert_allclose(lp + log_volume, chain, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pc.discrete_log_prob(net, params, x_int, labels), chain, rtol=1e-5, atol=1e-4)
    loss, metrics = model.loss(params, jax.random.PRNGKey(6), {"x": y, "label": labels} if conditional else y)
    if not conditional:  # (the conditional loss drops labels)
        np.testing.assert_allclose(loss, -chain.mean() / D, rtol=1e-5)
        np.testing.assert_allclose(metrics["nll_nats"], -chain.mean(), rtol=1e-5)


def test_probabilities_sum_to_one_over_all_images_of_a_tiny_grid():
    # An exact normalisation check: 2x2 images with 3 levels have 81 configurations.
    net = PixelCNN(num_levels=3, channels=4, head=8, num_layers=1, first_kernel=3)
    model = pc.make_pixelcnn_model(net, data_shape=(2, 2, 1), num_levels=3)
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(3)] * 4, indexing="ij"), -1).reshape(81, 2, 2, 1)
    params = model.init(jax.random.PRNGKey(0), images_lib.level_centres(grid, 3))
    logp = model.log_prob(params, None, images_lib.level_centres(grid, 3)) + images_lib.log_cell_volume((2, 2, 1), 3)
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("conditional", [False, True])
def test_sample_shape_and_levels(conditional):
    num_classes = 10 if conditional else None
    net = PixelCNN(num_levels=L, channels=8, head=16, num_layers=2, num_classes=num_classes)
    model = pc.make_pixelcnn_model(net, data_shape=SHAPE, num_levels=L, num_classes=num_classes,
                                   label_dropout=0.1)
    x = jnp.zeros((2,) + SHAPE)
    params = model.init(jax.random.PRNGKey(0), {"x": x, "label": jnp.zeros(2, jnp.int32)} if conditional else x)
    kwargs = {"guidance": 1.0} if conditional else {}
    s = jax.jit(lambda p, k: model.sample(p, k, 5, **kwargs))(params, jax.random.PRNGKey(1))
    assert s.shape == (5,) + SHAPE
    levels = images_lib.to_levels(s, L)
    np.testing.assert_allclose(s, images_lib.level_centres(levels, L), atol=1e-6)  # the cell centres
    assert int(levels.min()) >= 0 and int(levels.max()) < L
    # a sample is a draw of the model: its log-probability is finite
    assert np.all(np.isfinite(model.log_prob(params, None, s, **({"labels": jnp.arange(5)} if conditional else {}))))


def test_zero_temperature_limit_samples_the_argmax_chain():
    net = PixelCNN(num_levels=L, channels=8, head=16, num_layers=2)
    model = pc.make_pixelcnn_model(net, data_shape=SHAPE, num_levels=L)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE))
    # random biases too: at init they are zero and the first pixel's logits tie exactly
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    s = model.sample(params, jax.random.PRNGKey(1), 2, temperature=1e-6)
    levels = images_lib.to_levels(s, L)
    logits = net.apply(params, s)
    np.testing.assert_array_equal(levels, jnp.argmax(logits, -1))  # each pixel the mode given its past


def test_level_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match=r"256 levels.*17 levels"):
        pc.make_pixelcnn_model(PixelCNN(num_levels=256), data_shape=SHAPE, num_levels=17)
    net = PixelCNN(num_levels=L, channels=4, head=8, num_layers=1)
    params, _, _ = _init(net)
    bad = jnp.full((1, 1) + SHAPE, 20, jnp.int32)
    with pytest.raises(ValueError, match=r"levels 20\.\.20.*17 levels"):
        pc.encode_images(net, params, bad)
    config = digits_pixelcnn.get_config()
    config.model.num_levels = 256
    source = registry.build_source_for(config)
    with pytest.raises(ConfigError, match=r"num_levels=256.*17 levels"):
        registry.build_model(config, source)


@pytest.mark.parametrize("lanes,per_lane,conditional", [(3, 1, False), (1, 3, False), (2, 2, True)])
def test_range_coding_round_trip(lanes, per_lane, conditional):
    num_classes = 10 if conditional else None
    net = PixelCNN(num_levels=L, channels=8, head=16, num_layers=2, num_classes=num_classes)
    params, _, _ = _init(net, conditional=conditional)
    x = jax.random.randint(jax.random.PRNGKey(2), (lanes, per_lane) + SHAPE, 0, L)
    x = x.at[0, 0, :4].set(0)  # some structure besides noise
    labels = jnp.arange(lanes * per_lane).reshape(lanes, per_lane) % 10 if conditional else None
    streams, bits = pc.encode_images(net, params, x, labels)
    decoded, bits_dec = pc.decode_images(net, params, streams, per_lane, SHAPE, labels)
    np.testing.assert_array_equal(decoded, np.asarray(x))
    np.testing.assert_array_equal(bits_dec, bits)
    # the coder's bits are the model's: -log2 P(x) per image under the float model
    logp = pc.discrete_log_prob(net, params, x.reshape((-1,) + SHAPE),
                                None if labels is None else labels.reshape(-1))
    np.testing.assert_allclose(bits.sum(-1).reshape(-1), -logp / math.log(2), rtol=1e-4)
    # ... and the stream costs them plus at most 4 flush bytes and the quantization
    for b, s in enumerate(streams):
        assert 8 * len(s) <= bits[b].sum() + 32 + 0.01 * bits[b].size + 8


def _tiny_config():
    c = digits_pixelcnn.get_config()
    c.model.channels = 8
    c.model.head = 16
    c.model.num_layers = 2
    c.data.batch_size = 16
    c.train.num_steps = 20
    c.train.steps_per_call = 10
    c.train.checkpoint_every = 10
    c.sample.num = 4
    c.eval.num = 16
    return c


@pytest.mark.slow  # trained, resumed, sampled and evaluated end to end (~30 s)
def test_tiny_digits_run_resumes_exactly_samples_and_evaluates(tmp_path):
    config = _tiny_config()
    full = main.train(config, str(tmp_path / "full"), progress=False)
    main.train(config, str(tmp_path / "resumed"), stop_after=10, progress=False)
    resumed = main.train(config, str(tmp_path / "resumed"), progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    samples = main.sample(config, str(tmp_path / "full"), verbose=False)
    assert samples.shape == (4,) + SHAPE
    result = main.evaluate(config, str(tmp_path / "full"), verbose=False)
    # the evaluation's "NLL of the discrete data" is exactly -log P(x) (no bound)
    exp = Experiment(config)
    net = registry.build_pixelcnn_net(config, exp.source)
    x_int = exp.source.load_split("test")[0][:16]
    nll = -pc.discrete_log_prob(net, full.ema_params, x_int)
    assert result["num_eval"] == 16
    np.testing.assert_allclose(result["nll_nats"], float(nll.mean()), rtol=1e-5)


def test_compress_script_codes_a_split_both_ways_and_the_baselines_are_lossless():
    import io

    from PIL import Image

    from experiments import pixelcnn_compress

    net = PixelCNN(num_levels=L, channels=8, head=16, num_layers=2)
    params, _, _ = _init(net)
    x = np.asarray(jax.random.randint(jax.random.PRNGKey(8), (5,) + SHAPE, 0, L))
    out = pixelcnn_compress.code_split(net, params, x)  # raises if a round trip differs
    np.testing.assert_allclose(out["per_image_model_bits"], out["nll_bits"], rtol=1e-4)
    assert out["one_stream_bits"].shape == (1,) and out["per_image_bits"].shape == (5,)
    # one stream pays the 4 flush bytes once, per-image streams five times
    assert out["one_stream_bits"][0] < out["per_image_bits"].sum()
    grid = pixelcnn_compress.tile(x[..., 0].astype(np.uint8))
    assert grid.shape == (16, 24)  # 3 columns, 2 rows of 8x8
    np.testing.assert_array_equal(grid[:8, 8:16], x[1, ..., 0])
    for kwargs in (pixelcnn_compress.PNG, pixelcnn_compress.WEBP):
        buf = io.BytesIO()
        Image.fromarray(grid).save(buf, **kwargs)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")), grid)
        assert pixelcnn_compress.image_bytes(grid, **kwargs) == len(buf.getvalue())
