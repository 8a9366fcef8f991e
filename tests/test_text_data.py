"""Byte-level text data: the md5 file split and deterministic random windows."""
import hashlib
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.text_corpus import list_stdlib_files, read_stdlib_corpus
from genjax.data import text


def md5_mod_20(path: str) -> int:
    return int(hashlib.md5(path.encode()).hexdigest(), 16) % 20


def test_split_rule_is_md5_of_the_relative_path():
    paths = ["json/decoder.py", "os.py", "email/mime/text.py", "asyncio/tasks.py", "a/b/c.py"]
    paths += [f"pkg{i}/mod{i}.py" for i in range(200)]
    for p in paths:
        assert text.is_validation(p) == (md5_mod_20(p) == 0)
        assert text.split_of(p) == ("validation" if md5_mod_20(p) == 0 else "train")
    # 205 paths: both splits occur (P(no validation at all) = 0.95^205 < 3e-5).
    assert {text.split_of(p) for p in paths} == {"train", "validation"}


def test_excluded_directories():
    assert text.is_excluded("test/test_os.py")
    assert text.is_excluded("unittest/tests/test_case.py")
    assert text.is_excluded("idlelib/editor.py") and text.is_excluded("lib2to3/main.py")
    assert text.is_excluded("site-packages/pkg/mod.py")
    assert not text.is_excluded("unittest/case.py")  # 'unittest' is not 'test'
    assert not text.is_excluded("testing.py")


def _read(rel):
    return (pathlib.Path(sysconfig.get_paths()["stdlib"]) / rel).read_bytes()


@pytest.fixture(scope="module")
def corpus():
    return read_stdlib_corpus()


def test_stdlib_corpus_split_is_disjoint_and_follows_the_rule(corpus):
    train, val = corpus["files"]["train"], corpus["files"]["validation"]
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list_stdlib_files()
    assert all(md5_mod_20(p) == 0 for p in val) and all(md5_mod_20(p) != 0 for p in train)
    assert not any(text.is_excluded(p) for p in train + val)
    assert all(p.endswith(".py") for p in train + val)
    # Each file lands in validation with probability 1/20: the fraction is within
    # 5 binomial standard deviations of 0.05 (hundreds of files).
    n = len(train) + len(val)
    assert n > 300
    assert abs(len(val) / n - 0.05) < 5 * np.sqrt(0.05 * 0.95 / n)
    # Byte streams are the files' bytes, concatenated in path order.
    assert corpus["train"].dtype == np.uint8
    assert corpus["validation"].size == sum(len(_read(p)) for p in val)
    first = _read(val[0])
    np.testing.assert_array_equal(corpus["validation"][: len(first)], np.frombuffer(first, np.uint8))


def test_get_batch_windows_are_deterministic_contiguous_slices():
    T, B, L = 200, 16, 9
    tokens_T = jnp.arange(T, dtype=jnp.uint8)  # distinct values: a window's first token is its start
    b1 = text.get_batch(tokens_T, 3, 7, B, L)["tokens"]
    assert b1.shape == (B, L + 1) and b1.dtype == jnp.int32
    np.testing.assert_array_equal(b1, text.get_batch(tokens_T, 3, 7, B, L)["tokens"])
    assert not np.array_equal(b1, text.get_batch(tokens_T, 3, 8, B, L)["tokens"])
    assert not np.array_equal(b1, text.get_batch(tokens_T, 4, 7, B, L)["tokens"])
    starts = np.asarray(b1[:, 0])
    np.testing.assert_array_equal(b1, starts[:, None] + np.arange(L + 1)[None, :])
    # Seed s and key(s) give the same windows; jit gives the same windows.
    np.testing.assert_array_equal(b1, text.get_batch(tokens_T, jax.random.key(3), 7, B, L)["tokens"])
    jitted = jax.jit(text.get_batch, static_argnums=(3, 4))
    np.testing.assert_array_equal(b1, jitted(tokens_T, 3, 7, B, L)["tokens"])


def test_get_batch_starts_cover_the_whole_valid_range():
    T, L = 12, 4  # valid starts 0..7 (window of L + 1 = 5 tokens)
    tokens_T = jnp.arange(T, dtype=jnp.uint8)
    starts = np.asarray(text.get_batch(tokens_T, 0, 0, 4000, L)["tokens"][:, 0])
    assert starts.min() == 0 and starts.max() == T - L - 1
    # 4000 uniform draws over 8 starts: each count is 500 +- 21 (1 sd); 6 sd bound.
    counts = np.bincount(starts, minlength=T - L)
    assert np.all(np.abs(counts - 500) < 6 * np.sqrt(4000 * (1 / 8) * (7 / 8)))


def test_eval_windows_tile_the_stream():
    tokens_T = np.arange(23, dtype=np.uint8)
    w = text.eval_windows(tokens_T, 5)  # (23 - 1) // 5 = 4 windows
    assert w.shape == (4, 6)
    np.testing.assert_array_equal(w[:, 1:].ravel(), np.arange(1, 21))  # each target once
    np.testing.assert_array_equal(w[1:, 0], w[:-1, -1])


def test_too_short_streams_raise():
    with pytest.raises(ValueError, match="length 5 is shorter than seq_len \\+ 1 = 9"):
        text.get_batch(jnp.zeros((5,), jnp.uint8), 0, 0, 2, 8)
    with pytest.raises(ValueError, match="length 5 is shorter than seq_len \\+ 1 = 9"):
        text.eval_windows(np.zeros((5,), np.uint8), 8)
