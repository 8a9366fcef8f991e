"""Autoregressive language model: p(x) = prod_t p(x_t | x_<t) with a transformer.

The intractable density is replaced by a learned next-token distribution, and the
chain rule makes the likelihood exact (Bengio et al. 2003; Radford et al. 2019).
Training minimises the cross-entropy -1/(B L) sum log p(x_{t+1} | x_<=t).

Batches are dicts {'tokens': int32 (B, L + 1)}: inputs tokens[:, :-1], targets
tokens[:, 1:].
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax.autoregressive.decode import check_lengths, generate
from genjax.core import Model
from genjax.nn.transformer import MOE_COLLECTION, Transformer


def check_tokens(name: str, tokens, vocab_size: int) -> None:
    """ValueError naming the out-of-range values of a concrete token array.

    Traced arrays (inside jit) cannot be inspected and pass unchecked.
    """
    if isinstance(tokens, jax.core.Tracer):
        return
    arr = np.asarray(tokens)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} has dtype {arr.dtype}; expected integer token ids")
    bad = np.unique(arr[(arr < 0) | (arr >= vocab_size)])
    if bad.size:
        shown = ", ".join(str(int(b)) for b in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(f"{name} holds token ids [{shown}] outside [0, {vocab_size})")


def token_nll(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per position, in nats (float32)."""
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1)[..., 0]


def _mean_over_layers(sown):
    """{block: {name: (value,)}} -> {name: mean of value over blocks}."""
    names = next(iter(sown.values())).keys()
    return {name: jnp.mean(jnp.stack([v for block in sown.values() for v in block[name]]), axis=0)
            for name in names}


def make_lm(
    *,
    vocab_size: int,
    num_layers: int = 2,
    d_model: int = 64,
    num_heads: int = 4,
    d_ff: int | None = None,
    max_len: int = 256,
    dropout: float = 0.0,
    positions: str = "learned",
    tie_embeddings: bool = False,
    dtype: Any = jnp.float32,
    attention: str = "auto",
    layer_norm: str = "xla",
    gelu: str = "xla",
    num_experts: int = 0,
    experts_per_token: int = 2,
    expert_capacity_factor: float = 1.25,
    expert_dropless: bool = False,
    load_balancing_weight: float = 0.01,
    router_z_weight: float = 1e-3,
    bos_id: int = 0,
) -> Model:
    """A transformer LM as a `Model(init, loss, sample, log_prob)`.

    Keywords are the `Transformer` attributes; `bos_id` is the token generation
    starts from when `sample` gets no prompt. The params are the Transformer's
    'params' collection, so `Transformer(...)` with the same keywords decodes them
    (e.g. with `speculative_generate`).

    init(key, batch) -> params
    loss(params, key, batch, *, train=True) -> (nats/token, metrics); `key`
        drives dropout (off with train=False). Metrics: 'nats_per_token',
        'bits_per_byte' (nats / ln 2: bits per token, which are bytes for a
        byte vocabulary) and 'perplexity' (exp of nats/token).
    log_prob(params, key, batch) -> (B,) exact log p(tokens[1:] | tokens[0]) in
        nats; the first token is the conditioning context, not scored.
    sample(params, key, num, *, prompt=None, max_new_tokens=64, temperature=1.0,
        top_k=None, top_p=None) -> int32 (num, P + max_new_tokens), prompt
        included. `prompt` is (P,) shared by all samples or (num, P).

    Mixture of experts (num_experts > 0; see `genjax.nn.moe`): the training
    loss is nats/token + load_balancing_weight * (balancing loss) +
    router_z_weight * (z-loss), each averaged over layers (defaults 1e-2 as
    Switch, Fedus et al. 2021, and 1e-3 as ST-MoE, Zoph et al. 2022); the
    metrics add 'moe_load_balancing_loss', 'moe_router_z_loss',
    'moe_dropped_fraction' and 'moe_max_load' (E * the largest expert's share
    of assignments: 1 when balanced). 'nats_per_token' stays the NLL alone.
    """
    if not 0 <= bos_id < vocab_size:
        raise ValueError(f"bos_id={bos_id} outside [0, {vocab_size})")
    net = Transformer(
        vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
        d_ff=d_ff, max_len=max_len, dropout=dropout, positions=positions,
        tie_embeddings=tie_embeddings, dtype=dtype, attention=attention, layer_norm=layer_norm,
        gelu=gelu, num_experts=num_experts, experts_per_token=experts_per_token,
        expert_capacity_factor=expert_capacity_factor, expert_dropless=expert_dropless,
    )

    def split(batch):
        tokens = batch["tokens"]
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(f"batch['tokens'] has shape {tokens.shape}; expected (B, L + 1) with L >= 1")
        if tokens.shape[1] - 1 > max_len:
            raise ValueError(
                f"context length {tokens.shape[1] - 1} (batch['tokens'] is (B, L + 1) = "
                f"{tokens.shape}) exceeds max_len={max_len}"
            )
        check_tokens("batch['tokens']", tokens, vocab_size)
        return tokens[:, :-1], tokens[:, 1:]

    def init(key, batch):
        inputs_BL, _ = split(batch)
        return net.init(key, inputs_BL)["params"]

    def loss(params, key, batch, *, train: bool = True):
        inputs_BL, targets_BL = split(batch)
        if num_experts:
            logits_BLV, state = net.apply(
                {"params": params}, inputs_BL, deterministic=not train, rngs={"dropout": key},
                mutable=[MOE_COLLECTION],
            )
        else:
            logits_BLV = net.apply(
                {"params": params}, inputs_BL, deterministic=not train, rngs={"dropout": key}
            )
        nats = jnp.mean(token_nll(logits_BLV, targets_BL))
        metrics = {
            "nats_per_token": nats,
            "bits_per_byte": nats / jnp.log(2.0),
            "perplexity": jnp.exp(nats),
        }
        if not num_experts:
            return nats, metrics
        moe = _mean_over_layers(state[MOE_COLLECTION])
        metrics.update({
            "moe_load_balancing_loss": moe["load_balancing_loss"],
            "moe_router_z_loss": moe["router_z_loss"],
            "moe_dropped_fraction": moe["dropped_fraction"],
            "moe_max_load": num_experts * jnp.max(moe["load_E"]),
        })
        total = (nats + load_balancing_weight * moe["load_balancing_loss"]
                 + router_z_weight * moe["router_z_loss"])
        return total, metrics

    def log_prob(params, key, batch):
        del key  # exact and deterministic
        inputs_BL, targets_BL = split(batch)
        logits_BLV = net.apply({"params": params}, inputs_BL)
        return -jnp.sum(token_nll(logits_BLV, targets_BL), axis=-1)

    def sample(params, key, num, *, prompt=None, max_new_tokens=64, temperature=1.0, top_k=None, top_p=None):
        if prompt is None:
            prompt = jnp.full((1,), bos_id, jnp.int32)
        check_tokens("prompt", prompt, vocab_size)
        prompt = jnp.asarray(prompt, jnp.int32)
        if prompt.ndim == 1:
            prompt = jnp.broadcast_to(prompt, (num, prompt.shape[0]))
        elif prompt.ndim != 2 or prompt.shape[0] != num:
            raise ValueError(f"prompt has shape {prompt.shape}; expected (P,) or ({num}, P)")
        check_lengths(prompt.shape[1], max_new_tokens, max_len)
        if top_k is not None and not isinstance(top_k, jax.core.Tracer) and not 1 <= top_k <= vocab_size:
            raise ValueError(f"top_k={top_k}; expected an integer in [1, {vocab_size}]")
        return generate(
            net, params, key, prompt, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p,
        )

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
