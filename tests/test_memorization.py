"""The memorization probe (genjax.metrics.memorization; Carlini et al. 2023) against
cases whose answer is known."""
import time

import jax
import numpy as np
import pytest

from experiments import datasets
from genjax import metrics


def test_exact_copies_of_training_images_are_flagged():
    train, _ = datasets.load_digits("train")
    out = metrics.memorization(train[[3, 17, 500, 999]], train)
    np.testing.assert_array_equal(np.asarray(out["nearest"]), [3, 17, 500, 999])
    np.testing.assert_allclose(np.asarray(out["d1"]), 0.0)
    np.testing.assert_allclose(np.asarray(out["ratio"]), 0.0)
    assert np.asarray(out["near_copy"]).all()
    assert float(out["fraction"]) == 1.0


def test_hand_built_distances_give_the_hand_computed_ratio():
    # training points on the first axis at 1, 4, 6, 8, 100 (D = 3); query at the origin:
    # d1 = 1, the next two (n = 2) at 4 and 6: ratio 1 / 5 = 0.2 < 1/3, a near-copy
    train = np.zeros((5, 3), np.float32)
    train[:, 0] = [100.0, 6.0, 1.0, 8.0, 4.0]
    query = np.zeros((2, 3), np.float32)
    # second query at (0, 2, 0): distances sqrt(1+4), sqrt(16+4), sqrt(36+4): ratio sqrt(5) / mean
    query[1, 1] = 2.0
    out = metrics.memorization(query, train, num_neighbours=2)
    np.testing.assert_array_equal(np.asarray(out["nearest"]), [2, 2])
    expected = np.array([1.0 / 5.0, np.sqrt(5.0) / ((np.sqrt(20.0) + np.sqrt(40.0)) / 2)])
    np.testing.assert_allclose(np.asarray(out["ratio"]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["mean_next"]), [5.0, (np.sqrt(20.0) + np.sqrt(40.0)) / 2], rtol=1e-6)
    # 0.2 < 1/3; sqrt(5) / 5.40 = 0.414 > 1/3
    np.testing.assert_array_equal(np.asarray(out["near_copy"]), [True, False])
    assert float(out["fraction"]) == 0.5
    # the threshold is a parameter: at 0.5 both are near-copies
    assert float(metrics.memorization(query, train, num_neighbours=2, threshold=0.5)["fraction"]) == 1.0


def test_the_ratio_is_invariant_to_the_scale_and_chunking():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 16)).astype(np.float32)
    x = rng.normal(size=(37, 16)).astype(np.float32)
    a = metrics.memorization(x, train, num_neighbours=10, chunk_size=8)
    b = metrics.memorization(3.0 * x, 3.0 * train, num_neighbours=10, chunk_size=64)
    np.testing.assert_allclose(np.asarray(a["ratio"]), np.asarray(b["ratio"]), rtol=1e-5)


def test_held_out_test_images_are_rarely_near_copies():
    train, _ = datasets.load_digits("train")
    test, _ = datasets.load_digits("test")
    out = metrics.memorization(test, train)
    assert float(out["fraction"]) < 0.05
    assert float(np.median(np.asarray(out["ratio"]))) > 0.5


def test_a_thousand_queries_against_a_thousand_images_is_fast():
    train, _ = datasets.load_digits("train")
    x = np.random.default_rng(1).integers(0, 17, size=(1000, 8, 8, 1))
    probe = jax.jit(metrics.memorization)
    jax.block_until_ready(probe(x, train))
    t0 = time.perf_counter()
    jax.block_until_ready(probe(x, train))
    assert time.perf_counter() - t0 < 5.0


def test_bad_arguments_say_what_was_expected():
    train = np.zeros((10, 4))
    with pytest.raises(ValueError, match="dimensions"):
        metrics.memorization(np.zeros((2, 5)), train)
    with pytest.raises(ValueError, match="num_neighbours=10; expected an integer from 1 to 9"):
        metrics.memorization(np.zeros((2, 4)), train, num_neighbours=10)
