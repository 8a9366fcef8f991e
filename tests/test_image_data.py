"""Image data: the digits splits, dequantization into [-1, 1], epoch batching, grids."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.datasets import DIGITS_CLASSES, DIGITS_LEVELS, load_digits
from genjax.data import images
from genjax.diffusion.likelihood import uniform_dequantize

L = DIGITS_LEVELS


@pytest.fixture(scope="module")
def digits():
    return {split: load_digits(split) for split in ("train", "val", "test")}


def test_digits_splits_and_levels(digits):
    sizes = {split: len(x) for split, (x, _) in digits.items()}
    assert sizes == {"train": 1000, "val": 350, "test": 447}
    all_x = np.concatenate([x for x, _ in digits.values()])
    all_y = np.concatenate([y for _, y in digits.values()])
    assert all_x.dtype == np.uint8 and all_x.shape[1:] == (8, 8, 1)
    # 17 levels: the data uses exactly the integers 0..16.
    assert set(np.unique(all_x)) == set(range(L))
    assert all_y.dtype == np.int32 and set(np.unique(all_y)) == set(range(DIGITS_CLASSES))
    with pytest.raises(ValueError, match="'valid'"):
        load_digits("valid")


def test_to_model_space_round_trips_and_stays_in_the_bin(digits):
    x, _ = digits["train"]
    y, log_bin_volume = images.to_model_space(jax.random.key(0), x, L)
    assert y.dtype == jnp.float32 and y.shape == x.shape
    np.testing.assert_array_equal(np.asarray(images.to_levels(y, L)), x.astype(np.int32))
    # Bin edges in the same float32 arithmetic: rounding is monotone, so
    # lo(x) <= y <= hi(x) holds exactly for every value.
    width = np.float32(2 / L)
    x32 = x.astype(np.float32)
    lo, hi = np.float32(-1) + x32 * width, np.float32(-1) + (x32 + 1) * width
    y = np.asarray(y)
    assert np.all(lo <= y) and np.all(y <= hi)
    # Position within the bin is U[0, 1): mean 1/2, sd sqrt(1/12 / n); 5 sd.
    frac = (y.astype(np.float64) + 1) / (2 / L) - x
    assert abs(frac.mean() - 0.5) < 5 * math.sqrt(1 / 12 / frac.size)
    # ... and variance 1/12 (sd of the sample variance sqrt((1/80 - 1/144) / n)), so
    # values are spread over the bin, not parked at its centre.
    assert abs(frac.var() - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / frac.size)
    assert log_bin_volume == pytest.approx(64 * math.log(2 / L), rel=1e-12)
    # Different keys, different noise; same key, same values.
    y_other, _ = images.to_model_space(jax.random.key(1), x, L)
    assert not np.array_equal(np.asarray(y_other), y)
    np.testing.assert_array_equal(np.asarray(images.to_model_space(jax.random.key(0), x, L)[0]), y)


def test_round_trip_is_exact_where_float32_rounding_leaves_the_bin():
    # 256 levels, 2M values: u within float32 rounding of 0 or 1 puts the raw
    # dequantized value in a neighbouring bin about 6e-6 of the time (~12 here;
    # none at all has probability e^-12); to_model_space moves those to the centre.
    x = jax.random.randint(jax.random.key(5), (2000, 1024), 0, 256).astype(jnp.uint8)
    key = jax.random.key(6)
    raw, _ = uniform_dequantize(key, x.astype(jnp.float32), 256, -1.0, 1.0)
    assert int(jnp.sum(images.to_levels(raw, 256) != x)) > 0
    y, _ = images.to_model_space(key, x, 256)
    np.testing.assert_array_equal(np.asarray(images.to_levels(y, 256)), np.asarray(x, np.int32))
    # Only those values were moved.
    assert int(jnp.sum(y != raw)) == int(jnp.sum(images.to_levels(raw, 256) != x))


def test_to_levels_edges_and_clipping():
    width = 2 / L
    edges = np.array([-1 + k * width for k in range(L)], np.float32)
    # Mid-bin values map to their level; out-of-range values clip to the ends.
    np.testing.assert_array_equal(np.asarray(images.to_levels(edges + width / 2, L)), np.arange(L))
    np.testing.assert_array_equal(np.asarray(images.to_levels(jnp.array([-3.0, -1.0, 1.0, 7.0]), L)), [0, 0, L - 1, L - 1])
    with pytest.raises(ValueError, match="integer"):
        images.to_model_space(jax.random.key(0), np.zeros((2, 3), np.float32), L)


def test_array_batch_fn_epochs_are_permutations():
    N, B = 23, 5  # 4 batches per epoch, 3 examples dropped
    data = {"x": np.arange(N) * 10, "y": np.arange(N, dtype=np.int32)}
    batch_fn = images.array_batch_fn(data, B)
    key = jax.random.key(3)
    epochs = []
    for e in range(3):
        batches = [batch_fn(key, e * 4 + j) for j in range(4)]
        for b in batches:  # the two leaves are gathered with the same indices
            np.testing.assert_array_equal(np.asarray(b["x"]), 10 * np.asarray(b["y"]))
        seen = np.concatenate([np.asarray(b["y"]) for b in batches])
        assert len(set(seen.tolist())) == 4 * B  # no example twice within an epoch
        epochs.append(seen)
    # Same (key, step), same batch; the epochs differ.
    np.testing.assert_array_equal(np.asarray(batch_fn(key, 9)["y"]), epochs[2][B:2 * B])
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(np.asarray(batch_fn(jax.random.key(4), 0)["y"]), epochs[0][:B])


def test_array_batch_fn_covers_every_example_once_and_jits():
    N, B = 12, 4
    data = np.arange(N)
    batch_fn = images.array_batch_fn(data, B)
    key = jax.random.key(0)
    jitted = jax.jit(batch_fn)  # step traced
    for e in range(2):
        seen = np.concatenate([np.asarray(jitted(key, jnp.int32(e * 3 + j))) for j in range(3)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(N))
        eager = np.concatenate([np.asarray(batch_fn(key, e * 3 + j)) for j in range(3)])
        np.testing.assert_array_equal(seen, eager)
    # The epoch is the permutation drawn from fold_in(key, epoch).
    np.testing.assert_array_equal(
        np.asarray(batch_fn(key, 4)), np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), N))[4:8]
    )


def test_array_batch_fn_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size must be in"):
        images.array_batch_fn(np.arange(3), 4)
    with pytest.raises(ValueError, match="same leading axis"):
        images.array_batch_fn({"a": np.arange(3), "b": np.arange(4)}, 2)


def test_image_grid_places_each_image_inside_borders():
    N, H, W, C, nrow = 5, 3, 2, 1, 2
    x = jnp.arange(1, N * H * W * C + 1, dtype=jnp.int32).reshape(N, H, W, C)
    grid = np.asarray(images.image_grid(x, nrow, pad_value=-1))
    rows = 3
    assert grid.shape == (rows * (H + 1) + 1, nrow * (W + 1) + 1, C) and grid.dtype == np.int32
    mask = np.ones(grid.shape, bool)
    for i in range(N):
        r, c = divmod(i, nrow)
        top, left = 1 + r * (H + 1), 1 + c * (W + 1)
        np.testing.assert_array_equal(grid[top:top + H, left:left + W], np.asarray(x[i]))
        mask[top:top + H, left:left + W] = False
    assert np.all(grid[mask] == -1)  # borders and the empty sixth cell
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        images.image_grid(x[..., 0], nrow)
