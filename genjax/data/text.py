"""Byte-level text: the split rule and random-window batching (pure; no file I/O).

The offline corpus is the Python standard library's own `*.py` sources read as
bytes (vocabulary 256); `experiments/text_corpus.py` reads the files. Files are
split, not windows, so no validation text leaks into training: a file is in
validation when int(md5(relative posix path), 16) % 20 == 0 (about 5%).
"""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

VOCAB_SIZE = 256
EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages"})
VALIDATION_MODULUS = 20
# The context a file is coded from (and sampling starts from): a newline, the byte
# that precedes every file in the concatenated training stream.
START_TOKEN = ord("\n")


def is_excluded(relative_path: str) -> bool:
    """True when any component of the posix relative path is an excluded directory."""
    return any(part in EXCLUDED_DIRS for part in relative_path.split("/"))


def is_validation(relative_path: str) -> bool:
    """The split rule: md5 of the posix relative path, as an integer, mod 20 == 0."""
    digest = hashlib.md5(relative_path.encode()).hexdigest()
    return int(digest, 16) % VALIDATION_MODULUS == 0


def split_of(relative_path: str) -> str:
    """'validation' or 'train' for a posix relative path."""
    return "validation" if is_validation(relative_path) else "train"


def _as_key(key_or_seed):
    key_or_seed = jnp.asarray(key_or_seed) if isinstance(key_or_seed, int) else key_or_seed
    if jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key) or key_or_seed.ndim > 0:
        return key_or_seed  # a typed key or a raw uint32[2] key
    return jax.random.key(key_or_seed)


def get_batch(tokens_T, key_or_seed, step, batch: int, seq_len: int) -> dict:
    """Random windows of a token stream: {'tokens': int32 (batch, seq_len + 1)}.

    The windows depend only on (key or integer seed, step), through
    fold_in(key, step), so a resumed run sees the same data. Starts are uniform
    over [0, T - seq_len - 1]. Jittable with `batch` and `seq_len` static.
    """
    T = tokens_T.shape[0]
    if T < seq_len + 1:
        raise ValueError(f"token stream of length {T} is shorter than seq_len + 1 = {seq_len + 1}")
    key = jax.random.fold_in(_as_key(key_or_seed), step)
    starts_B = jax.random.randint(key, (batch,), 0, T - seq_len)
    tokens_T = jnp.asarray(tokens_T)
    window = lambda s: jax.lax.dynamic_slice_in_dim(tokens_T, s, seq_len + 1)
    return {"tokens": jax.vmap(window)(starts_B).astype(jnp.int32)}


def eval_windows(tokens_T, seq_len: int) -> np.ndarray:
    """Consecutive windows for evaluation: int32 (W, seq_len + 1), W = (T - 1) // seq_len.

    Window w covers tokens [w L, (w + 1) L], so the targets tile the stream
    (from its second token) exactly once; the remainder is dropped.
    """
    tokens_T = np.asarray(tokens_T)
    W = (tokens_T.shape[0] - 1) // seq_len
    if W < 1:
        raise ValueError(f"token stream of length {tokens_T.shape[0]} is shorter than seq_len + 1 = {seq_len + 1}")
    idx_WL = np.arange(W)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens_T[idx_WL].astype(np.int32)
