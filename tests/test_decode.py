"""Decoding (top-k / top-p / greedy / speculative) and the LM model bundle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from genjax.autoregressive import (
    generate,
    make_lm,
    process_logits,
    sample_logits,
    speculative_generate,
    top_k_logits,
    top_p_logits,
)
from genjax.nn.transformer import Transformer


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    # Accelerators default to reduced-precision (TF32) float32 matmuls; the
    # tolerances here are for true float32 (already the default on CPU).
    with jax.default_matmul_precision("highest"):
        yield


# Tests are deterministic (fixed keys); this threshold is the false-alarm rate a
# correct sampler would have over random keys.
P_VALUE_THRESHOLD = 1e-3


def random_params(net, key, scale=0.5):
    """Every leaf redrawn from N(0, scale^2), so next-token distributions are peaked."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def kept(logits_V):
    return set(np.flatnonzero(np.isfinite(np.asarray(logits_V))).tolist())


# ---------------------------------------------------------------- logit filters

PROBS = np.array([0.05, 0.5, 0.3, 0.15])  # ranked: token 1, 2, 3, 0


def test_top_k_keeps_the_k_largest():
    logits = jnp.array([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 2.0]])
    out = top_k_logits(logits, 2)
    assert kept(out[0]) == {1, 2} and kept(out[1]) == {2, 3}
    np.testing.assert_array_equal(out[0, [1, 2]], logits[0, [1, 2]])  # kept logits untouched
    assert kept(top_k_logits(logits, 1)[0]) == {1}
    assert kept(top_k_logits(logits, 4)[0]) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "p,expected",
    [
        (0.45, {1}),  # 0.5 already reaches 0.45
        (0.75, {1, 2}),  # mass before token 2 is 0.5 < 0.75; before token 3 it is 0.8
        (0.85, {1, 2, 3}),  # mass before token 3 is 0.8 < 0.85
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    logits = jnp.log(jnp.array(PROBS))
    assert kept(top_p_logits(logits, p)) == expected
    assert kept(top_p_logits(logits[None], p)[0]) == expected


def test_filters_compose_in_order_temperature_top_k_top_p():
    logits = jnp.log(jnp.array(PROBS))
    # T = 2: probs ∝ sqrt(PROBS) = [.120, .379, .294, .208].
    # top-p 0.7 alone: mass before token 3 is .673 < .7, so {1, 2, 3}.
    assert kept(process_logits(logits, temperature=2.0, top_p=0.7)) == {1, 2, 3}
    # top-k 3 first drops token 0 and renormalises to [.431, .334, .236] over
    # tokens 1, 2, 3; the mass before token 3 is now .764 >= .7, so {1, 2}.
    out = process_logits(logits, temperature=2.0, top_k=3, top_p=0.7)
    assert kept(out) == {1, 2}
    np.testing.assert_allclose(out[jnp.array([1, 2])], logits[jnp.array([1, 2])] / 2.0, rtol=1e-6)


def test_temperature_zero_is_greedy():
    logits = jax.random.normal(jax.random.key(0), (5, 9))
    draws = jax.vmap(lambda k: sample_logits(k, logits, temperature=0.0))(jax.random.split(jax.random.key(1), 50))
    np.testing.assert_array_equal(draws, np.broadcast_to(np.argmax(logits, -1), (50, 5)))
    # Also composed with filters (the argmax survives any top-k / top-p).
    draws = sample_logits(jax.random.key(2), logits, temperature=0.0, top_k=3, top_p=0.5)
    np.testing.assert_array_equal(draws, np.argmax(logits, -1))


# ------------------------------------------------------------- cached decoding

V, MAXLEN = 32, 24
TARGET = Transformer(vocab_size=V, num_layers=2, d_model=32, num_heads=4, max_len=MAXLEN)


def test_generate_greedy_matches_uncached_argmax_loop():
    params = random_params(TARGET, jax.random.key(3))
    prompt_BP = jax.random.randint(jax.random.key(4), (2, 3), 0, V)
    N = 10
    out = generate(TARGET, params, jax.random.key(5), prompt_BP, max_new_tokens=N, temperature=0.0)
    # Reference: a full forward pass over a fixed-length buffer per step, no cache.
    forward = jax.jit(lambda buf: TARGET.apply({"params": params}, buf))
    buf = np.zeros((2, MAXLEN), np.int32)
    buf[:, :3] = prompt_BP
    for t in range(3, 3 + N):
        buf[:, t] = np.argmax(forward(jnp.asarray(buf))[:, t - 1], axis=-1)
    np.testing.assert_array_equal(out, buf[:, : 3 + N])


def test_speculative_greedy_reproduces_target_greedy_exactly():
    t_params = random_params(TARGET, jax.random.key(6))
    prompt_P = jnp.array([3, 1, 4], jnp.int32)
    N, gamma = 12, 3
    want = generate(TARGET, t_params, jax.random.key(0), prompt_P[None], max_new_tokens=N, temperature=0.0)[0]

    run = lambda d_params, key: speculative_generate(
        TARGET, t_params, TARGET, d_params, key, prompt_P, max_new_tokens=N, gamma=gamma, temperature=0.0
    )
    # A draft with unrelated weights: mostly rejected, every correction from the target.
    got, st = run(random_params(TARGET, jax.random.key(7)), jax.random.key(8))
    np.testing.assert_array_equal(got, want)
    assert int(st["accepted"]) < N
    # The target as its own draft: every draft accepted plus a bonus token per call.
    got, st = run(t_params, jax.random.key(9))
    np.testing.assert_array_equal(got, want)
    assert int(st["target_calls"]) == -(-N // (gamma + 1))
    assert int(st["accepted"]) == gamma * int(st["target_calls"])


def exact_two_token_distribution(net, params, prompt_P, **processing):
    """p(x1, x2 | prompt) over all V^2 pairs, from full forward passes (no cache)."""
    Vs = net.vocab_size
    seqs_VT = jnp.concatenate([jnp.broadcast_to(prompt_P, (Vs, prompt_P.shape[0])), jnp.arange(Vs)[:, None]], 1)
    logits_VTV = jax.jit(net.apply)({"params": params}, seqs_VT)
    p1_V = jax.nn.softmax(process_logits(logits_VTV[0, -2], **processing))
    p2_VV = jax.nn.softmax(process_logits(logits_VTV[:, -1], **processing), axis=-1)
    return np.asarray(p1_V[:, None] * p2_VV).ravel()


def chi_square_p_value(pairs_M2, probs, vocab):
    """Pearson chi-square p-value of observed pairs against `probs` (V^2 cells).

    Cells with expected count < 5 are pooled (the usual validity rule of thumb).
    """
    M = pairs_M2.shape[0]
    counts = np.bincount(np.asarray(pairs_M2[:, 0] * vocab + pairs_M2[:, 1]), minlength=vocab * vocab)
    probs = np.asarray(probs, np.float64) / np.sum(probs, dtype=np.float64)
    expected = M * probs
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        if obs[-1] > 0:
            return 0.0  # a pair of probability zero was drawn: impossible under the hypothesis
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize(
    "processing",
    [dict(temperature=1.0), dict(temperature=0.8, top_k=3, top_p=0.9)],
    ids=["plain", "filtered"],
)
def test_speculative_sampling_has_the_target_distribution(processing):
    vocab, M = 4, 4000
    target = Transformer(vocab_size=vocab, num_layers=2, d_model=32, num_heads=4, max_len=8)
    draft = Transformer(vocab_size=vocab, num_layers=1, d_model=32, num_heads=4, max_len=8, positions="rotary")
    # Weight scale 0.3 gives varied, non-degenerate two-token distributions.
    t_params = random_params(target, jax.random.key(10), scale=0.3)
    d_params = random_params(draft, jax.random.key(11), scale=0.3)
    prompt_P = jnp.array([1, 3], jnp.int32)
    p_target = exact_two_token_distribution(target, t_params, prompt_P, **processing)
    p_draft = exact_two_token_distribution(draft, d_params, prompt_P, **processing)

    keys = jax.random.split(jax.random.key(12), M)
    spec = jax.jit(jax.vmap(lambda k: speculative_generate(
        target, t_params, draft, d_params, k, prompt_P, max_new_tokens=2, gamma=2, **processing
    )[0]))(keys)[:, 2:]
    plain = generate(target, t_params, jax.random.key(13), jnp.broadcast_to(prompt_P, (M, 2)),
                     max_new_tokens=2, **processing)[:, 2:]

    assert chi_square_p_value(spec, p_target, vocab) > P_VALUE_THRESHOLD
    assert chi_square_p_value(plain, p_target, vocab) > P_VALUE_THRESHOLD
    # Power: the same samples clearly reject the draft's own distribution.
    assert 0.5 * np.abs(p_target - p_draft).sum() > 0.2
    assert chi_square_p_value(spec, p_draft, vocab) < P_VALUE_THRESHOLD


# -------------------------------------------------------------------- the LM

LM_KW = dict(vocab_size=256, num_layers=2, d_model=32, num_heads=4, max_len=16)


def test_loss_and_log_prob_equal_manual_cross_entropy():
    model = make_lm(**LM_KW)
    tokens_BT = jax.random.randint(jax.random.key(14), (3, 11), 0, 256)
    batch = {"tokens": tokens_BT}
    params = jax.jit(model.init)(jax.random.key(15), batch)
    params = jax.tree.map(lambda x: 4.0 * x, params)  # logits far from uniform
    loss, metrics = jax.jit(model.loss)(params, jax.random.key(16), batch)

    logits = np.asarray(jax.jit(Transformer(**LM_KW).apply)({"params": params}, tokens_BT[:, :-1]), np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    tgt = np.asarray(tokens_BT[:, 1:])
    nll_BL = logz - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, nll_BL.mean(), rtol=1e-5)
    assert abs(float(loss) - np.log(256)) > 0.5  # not trivially the uniform value
    np.testing.assert_allclose(metrics["bits_per_byte"], nll_BL.mean() / np.log(2), rtol=1e-5)
    np.testing.assert_allclose(metrics["perplexity"], np.exp(nll_BL.mean()), rtol=1e-4)
    np.testing.assert_allclose(jax.jit(model.log_prob)(params, None, batch), -nll_BL.sum(-1), rtol=1e-5)


def test_sample_keeps_the_prompt_and_stays_in_vocab():
    model = make_lm(**LM_KW)
    params = jax.jit(model.init)(jax.random.key(17), {"tokens": jnp.zeros((1, 5), jnp.int32)})
    out = model.sample(params, jax.random.key(18), 3, prompt=jnp.array([104, 105]), max_new_tokens=6,
                       temperature=0.9, top_k=50, top_p=0.95)
    assert out.shape == (3, 8) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :2], [[104, 105]] * 3)
    assert int(out.min()) >= 0 and int(out.max()) < 256
    assert model.sample(params, jax.random.key(18), 2, max_new_tokens=3).shape == (2, 4)  # from bos


def test_bad_inputs_raise_with_the_values_named():
    model = make_lm(**LM_KW)
    params = jax.jit(model.init)(jax.random.key(19), {"tokens": jnp.zeros((1, 5), jnp.int32)})
    with pytest.raises(ValueError, match=r"\[-1, 300\] outside \[0, 256\)"):
        model.sample(params, jax.random.key(0), 1, prompt=np.array([65, 300, -1]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"context of 18 tokens \(prompt 10 \+ 8 new\).*max_len=16"):
        model.sample(params, jax.random.key(0), 1, prompt=np.arange(10), max_new_tokens=8)
    with pytest.raises(ValueError, match=r"context length 20 .* exceeds max_len=16"):
        model.loss(params, jax.random.key(0), {"tokens": jnp.zeros((2, 21), jnp.int32)})
    with pytest.raises(ValueError, match=r"\[256\] outside \[0, 256\)"):
        model.log_prob(params, None, {"tokens": np.array([[1, 256, 3]])})
    with pytest.raises(ValueError, match=r"context of 17 tokens .*speculative.*max_len=16"):
        net = Transformer(**LM_KW)
        speculative_generate(net, params, net, params, jax.random.key(0), jnp.arange(4), max_new_tokens=10, gamma=4)
