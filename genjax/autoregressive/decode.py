"""Decoding under jit with a KV cache: greedy, temperature, top-k, top-p, speculative.

Logit processing (all composable, applied in this order):
  temperature T: logits / T; T == 0 means greedy (all mass on the argmax).
  top-k: keep the k most likely tokens (Fan et al. 2018).
  top-p: keep the smallest set of most likely tokens whose probability reaches p
         (nucleus sampling, Holtzman et al. 2020, eq. 2).
Removed tokens get logit -inf. Temperature, k and p may be traced values; `None`
disables top-k / top-p.

`generate` decodes a batch with `lax.scan` (static `max_new_tokens`).
`speculative_generate` implements speculative sampling (Leviathan et al. 2023,
Algorithm 1; Chen et al. 2023, Algorithm 2): a draft model proposes `gamma`
tokens, the target scores them in one pass, draft token x is accepted with
probability min(1, p(x)/q(x)), the first rejected one is resampled from
norm(max(0, p - q)), and when all gamma are accepted a bonus token is drawn from
p. Its output has exactly the distribution of sampling the target alone (with
the same logit processing applied to both models); with temperature 0 it
reproduces the target's greedy output.
"""
from functools import partial

import jax
import jax.numpy as jnp

from genjax.nn.transformer import Transformer


def _greedy_logits(logits_BV):
    """Logits of the one-hot distribution on the (first) argmax."""
    top_B = jnp.argmax(logits_BV, axis=-1)
    hit_BV = jnp.arange(logits_BV.shape[-1]) == top_B[..., None]
    return jnp.where(hit_BV, 0.0, -jnp.inf)


def _ranks(logits_BV):
    """Rank of each token by decreasing logit (0 = most likely; ties by index)."""
    order_BV = jnp.argsort(-logits_BV, axis=-1, stable=True)
    return jnp.argsort(order_BV, axis=-1), order_BV


def top_k_logits(logits_BV: jax.Array, k) -> jax.Array:
    """Keeps the k largest logits (exactly k, ties broken by token index); the rest -inf."""
    ranks_BV, _ = _ranks(logits_BV)
    return jnp.where(ranks_BV < k, logits_BV, -jnp.inf)


def top_p_logits(logits_BV: jax.Array, p) -> jax.Array:
    """Nucleus filter (Holtzman et al. 2020, eq. 2).

    Keeps a token when the probability of the tokens ranked strictly above it is
    below p, i.e. the smallest top set whose mass reaches p. The top token is
    always kept.
    """
    ranks_BV, order_BV = _ranks(logits_BV)
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_sorted_BV = (mass_before_BV < p) | (jnp.arange(logits_BV.shape[-1]) == 0)
    keep_BV = jnp.take_along_axis(keep_sorted_BV, ranks_BV, axis=-1)
    return jnp.where(keep_BV, logits_BV, -jnp.inf)


def process_logits(logits_BV: jax.Array, *, temperature=1.0, top_k=None, top_p=None) -> jax.Array:
    """Temperature (0 = greedy), then top-k, then top-p; returns filtered logits."""
    logits_BV = logits_BV.astype(jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    scaled_BV = logits_BV / jnp.where(t > 0, t, 1.0)
    logits_BV = jnp.where(t > 0, scaled_BV, _greedy_logits(logits_BV))
    if top_k is not None:
        logits_BV = top_k_logits(logits_BV, top_k)
    if top_p is not None:
        logits_BV = top_p_logits(logits_BV, top_p)
    return logits_BV


def sample_logits(key, logits_BV, *, temperature=1.0, top_k=None, top_p=None) -> jax.Array:
    """One token per row from the processed distribution (int32)."""
    logits_BV = process_logits(logits_BV, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def check_lengths(prompt_len: int, max_new_tokens: int, max_len: int, *, extra: int = 0, who: str = "model"):
    """Raises ValueError unless 1 <= prompt_len, 1 <= max_new_tokens and the context fits."""
    if prompt_len < 1:
        raise ValueError(f"prompt length {prompt_len}; expected at least 1 token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected at least 1")
    need = prompt_len + max_new_tokens + extra
    if need > max_len:
        slack = f" + {extra} (speculative look-ahead)" if extra else ""
        raise ValueError(
            f"context of {need} tokens (prompt {prompt_len} + {max_new_tokens} new{slack}) "
            f"exceeds the {who}'s max_len={max_len}"
        )


@partial(jax.jit, static_argnames=("net", "max_new_tokens"))
def generate(
    net: Transformer,
    params,
    key,
    prompt_BP: jax.Array,
    *,
    max_new_tokens: int,
    temperature=1.0,
    top_k=None,
    top_p=None,
) -> jax.Array:
    """Autoregressive sampling with a KV cache: returns int32 (B, P + max_new_tokens).

    The prompt is fed in one prefill pass; each new token then costs one
    `decode_step`. Every row shares the prompt length P >= 1; ValueError unless
    P + max_new_tokens <= net.max_len.
    """
    B, P = prompt_BP.shape
    check_lengths(P, max_new_tokens, net.max_len)
    prompt_BP = prompt_BP.astype(jnp.int32)
    logits_BPV, cache = net.prefill(params, prompt_BP)
    keys = jax.random.split(key, max_new_tokens)
    sample = partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    first_B = sample(keys[0], logits_BPV[:, -1])

    def step(carry, xs):
        cache, tok_B = carry
        key_t, pos = xs
        logits_BV, cache = net.decode_step(params, cache, tok_B, pos)
        nxt_B = sample(key_t, logits_BV)
        return (cache, nxt_B), nxt_B

    positions = P + jnp.arange(max_new_tokens - 1)
    _, rest_NB = jax.lax.scan(step, (cache, first_B), (keys[1:], positions))
    new_BN = jnp.concatenate([first_B[:, None], rest_NB.T.reshape(B, -1)], axis=1)
    return jnp.concatenate([prompt_BP, new_BN], axis=1)


@partial(jax.jit, static_argnames=("target", "draft", "max_new_tokens", "gamma"))
def speculative_generate(
    target: Transformer,
    target_params,
    draft: Transformer,
    draft_params,
    key,
    prompt_P: jax.Array,
    *,
    max_new_tokens: int,
    gamma: int = 4,
    temperature=1.0,
    top_k=None,
    top_p=None,
):
    """Speculative sampling for ONE sequence (vmap over keys/prompts for a batch).

    Returns (tokens int32 (P + max_new_tokens,), stats) where stats holds
    'accepted' (draft tokens accepted) and 'target_calls' (target passes).
    Per iteration the draft runs gamma + 1 cached steps (the last one only writes
    the gamma-th draft token into its cache, in case all are accepted) and the
    target one pass over gamma + 1 tokens. Both models need
    P + max_new_tokens + gamma - 1 <= max_len; both share the vocabulary.

    Batching: the number of accepted tokens differs per sequence, so the loop is
    written for one sequence; `jax.vmap` over it runs the batch in lockstep until
    the slowest sequence finishes.
    """
    P = prompt_P.shape[0]
    if gamma < 1:
        raise ValueError(f"gamma={gamma}; expected at least 1 draft token per step")
    for name, net in (("target", target), ("draft", draft)):
        check_lengths(P, max_new_tokens, net.max_len, extra=gamma - 1, who=name)
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"draft vocab_size={draft.vocab_size} differs from target vocab_size={target.vocab_size}"
        )
    total = P + max_new_tokens
    V = target.vocab_size
    prompt_P = prompt_P.astype(jnp.int32)
    process = partial(process_logits, temperature=temperature, top_k=top_k, top_p=top_p)

    t_cache = target.init_cache(1)
    d_cache = draft.init_cache(1)
    if P > 1:
        # Invariant: both caches hold tokens [0, n - 1); token n - 1 is pending.
        _, t_cache = target.prefill(target_params, prompt_P[None, :-1], t_cache)
        _, d_cache = draft.prefill(draft_params, prompt_P[None, :-1], d_cache)
    buf = jnp.zeros((total + gamma + 1,), jnp.int32).at[:P].set(prompt_P)

    def draft_step(carry, key_i):
        cache, tok, pos = carry
        logits_1V, cache = draft.decode_step(draft_params, cache, tok[None], pos)
        logits_V = process(logits_1V)[0]
        nxt = jax.random.categorical(key_i, logits_V).astype(jnp.int32)
        return (cache, nxt, pos + 1), (nxt, jax.nn.softmax(logits_V))

    def body(state):
        buf, n, t_cache, d_cache, key, accepted, calls = state
        key, k_draft, k_accept, k_resid = jax.random.split(key, 4)
        last = buf[n - 1]
        (d_cache, _, _), (drafts_G1, q_G1V) = jax.lax.scan(
            draft_step, (d_cache, last, n - 1), jax.random.split(k_draft, gamma + 1)
        )
        drafts_G = drafts_G1[:gamma]
        block = jnp.concatenate([last[None], drafts_G])
        logits_1TV, t_cache = target.extend(target_params, t_cache, block[None], n - 1)
        p_TV = jax.nn.softmax(process(logits_1TV[0]), axis=-1)  # T = gamma + 1

        # Accept x with prob min(1, p(x)/q(x)): u < p/q, written without division.
        idx_G = jnp.arange(gamma)
        p_x = p_TV[idx_G, drafts_G]
        q_x = q_G1V[idx_G, drafts_G]
        u_G = jax.random.uniform(k_accept, (gamma,))
        ok_G = u_G * q_x < p_x
        k = jnp.sum(jnp.cumprod(ok_G.astype(jnp.int32)))

        # Rejection at k < gamma: resample from norm(max(0, p - q)); with q set
        # to 0 at index gamma the same line draws the bonus token from p.
        q_TV = jnp.concatenate([q_G1V[:gamma], jnp.zeros((1, V))], axis=0)
        resid_V = jnp.maximum(p_TV[k] - q_TV[k], 0.0)
        resid_V = jnp.where(jnp.sum(resid_V) > 0, resid_V, p_TV[k])
        new_tok = jax.random.categorical(k_resid, jnp.log(resid_V)).astype(jnp.int32)

        out_T = jnp.where(jnp.arange(gamma + 1) < k, jnp.append(drafts_G, 0), new_tok)
        buf = jax.lax.dynamic_update_slice(buf, out_T, (n,))
        return buf, n + k + 1, t_cache, d_cache, key, accepted + k, calls + 1

    state = (buf, jnp.int32(P), t_cache, d_cache, key, jnp.int32(0), jnp.int32(0))
    buf, _, _, _, _, accepted, calls = jax.lax.while_loop(lambda s: s[1] < total, body, state)
    return buf[:total], {"accepted": accepted, "target_calls": calls}
