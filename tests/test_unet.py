"""U-Net: shapes, the zero-initialised output, conditioning on time and labels,
the null label, per-example independence (vmap), dropout, and bad input.

Compiling `init` is slow on CPU (random initialisers), so only one test runs the
real initialiser; the others draw parameters with numpy into the shapes that
`jax.eval_shape(net.init, ...)` reports.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.nn.unet import UNet, num_params

DIGITS = (8, 8, 1)


def example(shape, labels):
    return (jnp.zeros((2,) + shape), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32) if labels else None)


def random_params(net, shape, seed=0, scale=0.2, labels=False):
    """Every leaf drawn from N(0, scale^2), GroupNorm scales around 1: a net whose
    output depends on everything it is given (at init the output conv is zero)."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), *example(shape, labels))
    rng = np.random.default_rng(seed)
    draw = lambda path, leaf: (1.0 if path[-1].key == "scale" else 0.0) \
        + scale * rng.standard_normal(leaf.shape).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def rms(a):
    return float(jnp.sqrt(jnp.mean(jnp.square(a))))


COND = UNet(num_classes=10, attention_resolutions=(4,))


@pytest.fixture(scope="module")
def cond_params():
    return random_params(COND, DIGITS, labels=True)


@pytest.fixture(scope="module")
def cond_apply():
    return jax.jit(COND.apply)


@pytest.mark.parametrize("shape, channels, attention", [
    (DIGITS, (32, 64), (4,)), ((28, 28, 1), (32, 64, 128), (14,)), ((32, 32, 3), (64, 128, 128), (16,))])
def test_output_shape(shape, channels, attention):
    for net in (UNet(channels=channels, attention_resolutions=attention),
                UNet(channels=channels, num_classes=10, num_res_blocks=2)):
        labels = net.num_classes is not None
        params = jax.eval_shape(net.init, jax.random.key(0), *example(shape, labels))
        y = jnp.zeros((5,), jnp.int32) if labels else None
        out = jax.eval_shape(net.apply, params, jnp.zeros((5,) + shape), jnp.zeros(5), y)
        assert out.shape == (5,) + shape and out.dtype == jnp.float32
    net = UNet(channels=channels, out_channels=2)
    params = jax.eval_shape(net.init, jax.random.key(0), *example(shape, False))
    assert jax.eval_shape(net.apply, params, jnp.zeros((5,) + shape), jnp.zeros(5)).shape == (5,) + shape[:2] + (2,)


def test_digits_size():
    # A few hundred thousand parameters for the digits default, so it trains fast on CPU.
    params = jax.eval_shape(UNet().init, jax.random.key(0), *example(DIGITS, False))
    assert 100_000 < num_params(params) < 500_000


def test_real_init_predicts_zero():
    """The output conv is zero-initialised (Nichol & Dhariwal 2021), so the first
    prediction is exactly zero; the other kernels are not."""
    params = jax.jit(COND.init)(jax.random.key(0), *example(DIGITS, True))
    x = jax.random.normal(jax.random.key(1), (3,) + DIGITS)
    out = jax.jit(COND.apply)(params, x, jnp.array([0.1, 0.5, 0.9]), jnp.array([1, 2, 10]))
    assert out.shape == x.shape
    assert float(jnp.max(jnp.abs(out))) == 0.0
    assert float(jnp.std(params["params"]["conv_in"]["kernel"])) > 0.1


def test_time_and_label_change_the_output(cond_params, cond_apply):
    x = jax.random.normal(jax.random.key(3), (4,) + DIGITS)
    y = jnp.array([0, 3, 5, 9])
    t = jnp.full(4, 0.3)
    base = cond_apply(cond_params, x, t, y)
    scale = rms(base)
    assert scale > 0.1  # a non-degenerate output
    # Each change must move the output by a sizeable fraction of its scale
    # (float rounding alone moves it by ~1e-6 of it).
    assert rms(cond_apply(cond_params, x, jnp.full(4, 0.7), y) - base) > 0.01 * scale
    assert rms(cond_apply(cond_params, x, t, (y + 1) % 10) - base) > 0.01 * scale
    np.testing.assert_array_equal(cond_apply(cond_params, x, t, y), base)


def test_time_and_label_only_enter_through_the_embedding(cond_params, cond_apply):
    """With the last time-MLP layer and the class table zeroed, neither t nor the
    label has any other path to the output: the output is exactly unchanged."""
    p = jax.tree_util.tree_map(lambda a: a, cond_params)
    p["params"]["time_mlp_1"] = jax.tree_util.tree_map(jnp.zeros_like, p["params"]["time_mlp_1"])
    p["params"]["class_embed"] = jax.tree_util.tree_map(jnp.zeros_like, p["params"]["class_embed"])
    x = jax.random.normal(jax.random.key(5), (2,) + DIGITS)
    a = cond_apply(p, x, jnp.array([0.1, 0.2]), jnp.array([1, 2]))
    b = cond_apply(p, x, jnp.array([0.8, 0.9]), jnp.array([7, 10]))
    np.testing.assert_array_equal(a, b)


def test_null_label_is_the_default(cond_params):
    x = jax.random.normal(jax.random.key(7), (2,) + DIGITS)
    t = jnp.array([0.2, 0.8])
    default = jax.jit(lambda p, x, t: COND.apply(p, x, t))(cond_params, x, t)
    np.testing.assert_array_equal(default, jax.jit(COND.apply)(cond_params, x, t, jnp.full(2, 10)))
    assert rms(default - jax.jit(COND.apply)(cond_params, x, t, jnp.zeros(2, jnp.int32))) > 0.01 * rms(default)


def test_examples_do_not_mix_and_vmap_matches_batch(cond_params, cond_apply):
    """GroupNorm and attention act within an example: the batched output equals
    the vmapped single-example output, and moving one example moves only it."""
    x = jax.random.normal(jax.random.key(9), (5,) + DIGITS)
    t = jnp.linspace(0.1, 0.9, 5)
    y = jnp.arange(5)
    batched = cond_apply(cond_params, x, t, y)
    one = lambda xi, ti, yi: COND.apply(cond_params, xi[None], ti[None], yi[None])[0]
    np.testing.assert_allclose(jax.jit(jax.vmap(one))(x, t, y), batched, rtol=1e-5, atol=1e-5 * rms(batched))
    moved = cond_apply(cond_params, x.at[0].add(1.0), t, y)
    np.testing.assert_array_equal(moved[1:], batched[1:])
    assert rms(moved[0] - batched[0]) > 0


def test_scalar_time_broadcasts(cond_params, cond_apply):
    x = jax.random.normal(jax.random.key(11), (3,) + DIGITS)
    y = jnp.array([1, 2, 3])
    np.testing.assert_array_equal(cond_apply(cond_params, x, 0.4, y), cond_apply(cond_params, x, jnp.full(3, 0.4), y))


def test_dropout_only_in_training(cond_params, cond_apply):
    net = COND.clone(dropout=0.5)  # dropout has no parameters: the same params fit
    x = jax.random.normal(jax.random.key(13), (2,) + DIGITS)
    t, y = jnp.array([0.3, 0.6]), jnp.array([4, 5])
    train = jax.jit(lambda p, key: net.apply(p, x, t, y, train=True, rngs={"dropout": key}))
    eval_out = jax.jit(lambda p: net.apply(p, x, t, y))(cond_params)
    np.testing.assert_array_equal(eval_out, cond_apply(cond_params, x, t, y))
    a, b = train(cond_params, jax.random.key(0)), train(cond_params, jax.random.key(1))
    assert rms(a - b) > 0.01 * rms(eval_out)
    assert rms(a - eval_out) > 0.01 * rms(eval_out)


def test_bad_input(cond_params):
    with pytest.raises(ValueError, match=r"\(2, 6, 6, 1\).*divisible by 4"):
        jax.eval_shape(UNet(channels=(32, 64, 64)).init, jax.random.key(0), *example((6, 6, 1), False))
    with pytest.raises(ValueError, match=r"\(2, 8, 12, 1\).*divisible by 8"):
        jax.eval_shape(UNet(channels=(8, 8, 8, 8)).init, jax.random.key(0), *example((8, 12, 1), False))
    uncond = UNet()
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(uncond.init, jax.random.key(0), *example(DIGITS, True))
    params = random_params(uncond, DIGITS)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.apply(params, jnp.zeros((2,) + DIGITS), jnp.zeros(2), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"t has shape \(3,\)"):
        uncond.apply(params, jnp.zeros((2,) + DIGITS), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"labels have shape \(2, 1\)"):
        COND.apply(cond_params, jnp.zeros((2,) + DIGITS), jnp.zeros(2), jnp.zeros((2, 1), jnp.int32))
    with pytest.raises(ValueError, match="groups=8"):
        jax.eval_shape(UNet(channels=(12, 24)).init, jax.random.key(0), *example(DIGITS, False))
