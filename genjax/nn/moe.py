"""A routed mixture-of-experts MLP (sparse MoE) with auxiliary routing losses.

Each token x (a row of x_BTD) is scored by a linear router, p = softmax(W_r x)
over E experts; the k most probable experts are chosen (k=1: Switch Transformer,
Fedus et al. 2021; k=2: GShard, Lepikhin et al. 2020, and Mixtral, Jiang et al.
2024), their probabilities are renormalized to gates that sum to 1, and the
output is sum_{e chosen} gate_e * MLP_e(x), each MLP_e a GELU MLP of width d_ff
with its own weights.

Two ways to compute it:
- capacity (default): every expert takes at most
  C = ceil(capacity_factor * k * N / E) of the N = B*T tokens (Fedus et al. 2021,
  eq. 3 with k assignments per token). Assignments are served in order of choice
  rank first (all first choices before any second choice, as in GShard), then
  token order; an assignment over its expert's capacity is dropped: it adds
  nothing, and a token whose every assignment is dropped gets a zero output, so
  through the block's residual connection it passes unchanged. The gates of the
  kept assignments are not renormalized again. Static shapes (E, C, D): the
  dispatch and combine tensors are one-hot einsums.
- dropless (`dropless=True`): the N*k assignments are sorted by expert and the
  experts run as one grouped matmul, `jax.lax.ragged_dot`; no token is dropped
  (MegaBlocks, Gale et al. 2022). With a capacity large enough that nothing
  drops, both paths compute the same function.

Auxiliary outputs. The module returns (y_BTD, aux), aux a dict of float32
scalars / vectors (a returned dict rather than `self.sow`: the caller adds the
losses it wants with its own weights, and nothing mutable has to be threaded
through `apply`, `scan` or `remat`):
- "load_balancing_loss": E * sum_e f_e P_e (Fedus et al. 2021, eq. 4), f_e the
  fraction of the N*k assignments routed to expert e (before capacity drops; for
  k=1 exactly the paper's fraction of tokens), P_e the mean router probability
  of expert e. It is 1 when the router probabilities are uniform, and at most E.
- "router_z_loss": mean over tokens of (logsumexp of the router logits)^2
  (Zoph et al. 2022, "ST-MoE", eq. 5).
- "load_E": f_e, the routing statistic "load per expert" (sums to 1).
- "dropped_fraction": the fraction of the N*k assignments dropped for capacity
  (0 on the dropless path).

Expert parallelism: every expert weight carries a leading expert axis E
(w_in_EDF, b_in_EF, w_out_EFD, b_out_ED), so placing those leaves with
`expert_parallel_shardings` (E split over an `expert` mesh axis) lets the
sharded `jax.jit` run each expert on the devices that hold it.

The router runs in float32; expert matmuls take `dtype` inputs.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

EXPERT_PARAMS = ("w_in_EDF", "b_in_EF", "w_out_EFD", "b_out_ED")


def expert_capacity(num_tokens: int, num_experts: int, experts_per_token: int,
                    capacity_factor: float) -> int:
    """C = ceil(capacity_factor * k * N / E), at least 1 (Fedus et al. 2021, eq. 3)."""
    return max(1, math.ceil(capacity_factor * experts_per_token * num_tokens / num_experts))


def route(logits_NE: jax.Array, experts_per_token: int, *, normalize_gates: bool = True):
    """Top-k routing of router logits.

    Returns (probs_NE, gates_NK, experts_NK): the softmax router probabilities,
    the gates of the k chosen experts (renormalized to sum to 1 when
    `normalize_gates`, else the raw probabilities, as in Switch), and their
    indices, most probable first (ties go to the lower index).
    """
    probs_NE = jax.nn.softmax(logits_NE.astype(jnp.float32), axis=-1)
    gates_NK, experts_NK = jax.lax.top_k(probs_NE, experts_per_token)
    if normalize_gates:
        gates_NK = gates_NK / jnp.sum(gates_NK, axis=-1, keepdims=True)
    return probs_NE, gates_NK, experts_NK


def load_balancing_loss(probs_NE: jax.Array, experts_NK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """E * sum_e f_e P_e (Fedus et al. 2021, eq. 4); returns (loss, f_E).

    f_e: fraction of the N*k assignments that chose expert e; P_e: mean router
    probability of e. f carries no gradient (an argmax count); P does.
    """
    num_experts = probs_NE.shape[-1]
    load_E = jnp.mean(jax.nn.one_hot(experts_NK, num_experts, dtype=jnp.float32), axis=(0, 1))
    mean_prob_E = jnp.mean(probs_NE, axis=0)
    return num_experts * jnp.sum(jax.lax.stop_gradient(load_E) * mean_prob_E), load_E


def router_z_loss(logits_NE: jax.Array) -> jax.Array:
    """mean_n (logsumexp_e logits_ne)^2 (Zoph et al. 2022, eq. 5)."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_NE.astype(jnp.float32), axis=-1)))


def capacity_dispatch(gates_NK: jax.Array, experts_NK: jax.Array, num_experts: int, capacity: int):
    """One-hot dispatch and combine tensors of the capacity path.

    Assignment (n, k) takes slot c of expert e = experts_NK[n, k] if fewer than
    `capacity` assignments came before it in the order (choice rank, token);
    otherwise it is dropped. Returns (dispatch_NEC (0/1), combine_NEC (gate at
    the kept slot), dropped_fraction).
    """
    N, K = experts_NK.shape
    mask_KNE = jax.nn.one_hot(experts_NK.T, num_experts, dtype=jnp.int32)
    # Slot of each assignment in its expert's buffer: earlier choice ranks first.
    slot_KNE = jnp.cumsum(mask_KNE.reshape(K * N, num_experts), axis=0).reshape(K, N, num_experts) - 1
    kept_KNE = mask_KNE * (slot_KNE < capacity)
    slot_KN = jnp.sum(slot_KNE * kept_KNE, axis=-1)
    kept_KN = jnp.sum(kept_KNE, axis=-1)
    dispatch_KNEC = (kept_KNE[..., None]
                     * jax.nn.one_hot(slot_KN, capacity, dtype=jnp.int32)[:, :, None, :])
    dispatch_NEC = jnp.sum(dispatch_KNEC, axis=0).astype(jnp.float32)
    combine_NEC = jnp.einsum("kn,knec->nec", gates_NK.T, dispatch_KNEC.astype(jnp.float32))
    dropped_fraction = 1.0 - jnp.mean(kept_KN.astype(jnp.float32))
    return dispatch_NEC, combine_NEC, dropped_fraction


class MoEMLP(nn.Module):
    """Routed GELU MLP: x_BTD -> (y_BTD, aux) (see the module docstring).

    Attributes:
      num_experts: E.
      experts_per_token: k (1 <= k <= E).
      d_ff: hidden width of every expert.
      capacity_factor: C = ceil(capacity_factor * k * B*T / E) slots per expert
        on the capacity path (ignored when `dropless`).
      dropless: sort assignments by expert and use `jax.lax.ragged_dot`; no drops.
      normalize_gates: renormalize the k chosen probabilities to sum to 1
        (GShard / Mixtral). With k=1 the gate is then always 1 and the router
        learns only through the auxiliary losses; False keeps the raw
        probability (Switch).
      gelu_approximate: tanh-approximate GELU, as in the dense Transformer MLP.
      dtype: input dtype of the expert matmuls (router and gates stay float32).
    """

    num_experts: int
    experts_per_token: int
    d_ff: int
    capacity_factor: float = 1.25
    dropless: bool = False
    normalize_gates: bool = True
    gelu_approximate: bool = True
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(0.02)
    out_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x_BTD: jax.Array):
        E, K, F = self.num_experts, self.experts_per_token, self.d_ff
        if not 1 <= K <= E:
            raise ValueError(f"experts_per_token={K} must be between 1 and num_experts={E}")
        B, T, D = x_BTD.shape
        N = B * T
        x_ND = x_BTD.reshape(N, D)
        router_DE = self.param("router", nn.initializers.normal(0.02), (D, E))
        w_in_EDF = self.param("w_in_EDF", _per_expert(self.kernel_init), (E, D, F))
        b_in_EF = self.param("b_in_EF", nn.initializers.zeros, (E, F))
        w_out_EFD = self.param("w_out_EFD", _per_expert(self.out_init), (E, F, D))
        b_out_ED = self.param("b_out_ED", nn.initializers.zeros, (E, D))

        logits_NE = jnp.dot(x_ND.astype(jnp.float32), router_DE)
        probs_NE, gates_NK, experts_NK = route(logits_NE, K, normalize_gates=self.normalize_gates)
        balance, load_E = load_balancing_loss(probs_NE, experts_NK)
        weights = (w_in_EDF.astype(self.dtype), b_in_EF, w_out_EFD.astype(self.dtype), b_out_ED)
        if self.dropless:
            y_ND = _dropless_experts(x_ND.astype(self.dtype), gates_NK, experts_NK, weights,
                                     self.gelu_approximate)
            dropped = jnp.zeros((), jnp.float32)
        else:
            C = expert_capacity(N, E, K, self.capacity_factor)
            dispatch_NEC, combine_NEC, dropped = capacity_dispatch(gates_NK, experts_NK, E, C)
            xin_ECD = jnp.einsum("nec,nd->ecd", dispatch_NEC.astype(self.dtype), x_ND.astype(self.dtype))
            out_ECD = _expert_mlp(xin_ECD, weights, self.gelu_approximate)
            y_ND = jnp.einsum("nec,ecd->nd", combine_NEC, out_ECD.astype(jnp.float32))
        aux = {
            "load_balancing_loss": balance,
            "router_z_loss": router_z_loss(logits_NE),
            "load_E": load_E,
            "dropped_fraction": dropped,
        }
        return y_ND.reshape(B, T, D).astype(x_BTD.dtype), aux


def _per_expert(init):
    """An initializer for (E, ...) that draws each expert's slice with `init`."""
    def init_fn(key, shape, dtype=jnp.float32):
        keys = jax.random.split(key, shape[0])
        return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
    return init_fn


def _expert_mlp(x_ECD, weights, gelu_approximate):
    w_in_EDF, b_in_EF, w_out_EFD, b_out_ED = weights
    h_ECF = jnp.einsum("ecd,edf->ecf", x_ECD, w_in_EDF, preferred_element_type=jnp.float32)
    h_ECF = jax.nn.gelu(h_ECF + b_in_EF[:, None, :], approximate=gelu_approximate)
    out_ECD = jnp.einsum("ecf,efd->ecd", h_ECF.astype(w_out_EFD.dtype), w_out_EFD,
                         preferred_element_type=jnp.float32)
    return out_ECD + b_out_ED[:, None, :]


def _dropless_experts(x_ND, gates_NK, experts_NK, weights, gelu_approximate):
    """Every assignment through its expert: sort by expert, grouped matmul
    (`jax.lax.ragged_dot`), weight by the gate, scatter-add back to tokens."""
    w_in_EDF, b_in_EF, w_out_EFD, b_out_ED = weights
    N, K = experts_NK.shape
    E = w_in_EDF.shape[0]
    expert_A = experts_NK.reshape(N * K)
    order_A = jnp.argsort(expert_A, stable=True)
    token_A = order_A // K
    sorted_expert_A = expert_A[order_A]
    group_sizes_E = jnp.bincount(expert_A, length=E).astype(jnp.int32)
    h_AF = jax.lax.ragged_dot(x_ND[token_A], w_in_EDF, group_sizes_E,
                              preferred_element_type=jnp.float32)
    h_AF = jax.nn.gelu(h_AF + b_in_EF[sorted_expert_A], approximate=gelu_approximate)
    out_AD = jax.lax.ragged_dot(h_AF.astype(w_out_EFD.dtype), w_out_EFD, group_sizes_E,
                                preferred_element_type=jnp.float32)
    out_AD = (out_AD + b_out_ED[sorted_expert_A]) * gates_NK.reshape(N * K)[order_A][:, None]
    return jax.ops.segment_sum(out_AD, token_A, num_segments=N)


def expert_parallel_shardings(params, mesh: jax.sharding.Mesh, axis: str = "expert"):
    """NamedShardings for a parameter tree holding `MoEMLP` layers: the leaves
    named in EXPERT_PARAMS split their leading expert axis over mesh axis `axis`;
    every other leaf is replicated. Raises if the axis size does not divide E."""
    size = mesh.shape[axis]

    def sharding(path, leaf):
        name = getattr(path[-1], "key", None)
        if name in EXPERT_PARAMS:
            num_experts = np.shape(leaf)[0]
            if num_experts % size:
                raise ValueError(f"mesh axis {axis!r} of size {size} does not divide "
                                 f"num_experts={num_experts}")
            return NamedSharding(mesh, P(axis))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(sharding, params)
