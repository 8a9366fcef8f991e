"""Vector quantization with an EMA codebook (van den Oord et al. 2017).

The encoder's output z_e(x) (one D-vector per grid cell) is replaced by its
nearest codebook entry, z_q = e_k, k = argmin_j ||z_e - e_j||^2 (eq. 1-2).
The argmin has no gradient; the straight-through estimator copies the decoder's
gradient at z_q to z_e (sec. 3.2): z = z_e + stop_gradient(z_q - z_e).

The codebook is not trained by gradient but by exponential moving averages
(App. A.1, eqs. 6-8), with decay gamma, over the n_i encoder outputs assigned to
code i in a batch:

    N_i <- gamma N_i + (1 - gamma) n_i
    m_i <- gamma m_i + (1 - gamma) sum_{j: k_j = i} z_e,j
    e_i  = m_i / N~_i,   N~_i = (N_i + eps) / (sum_l N_l + K eps) * sum_l N_l

N~ is N with additive (Laplace) smoothing, so a code that is never used keeps a
finite value. The state {"codebook": e (K, D), "cluster_size": N (K,),
"code_sum": m (K, D)} is the model's state (docs/protocol.md), never
differentiated, decayed or averaged by the trainer.
"""
import jax
import jax.numpy as jnp


def init_codebook_state(key, codebook_size: int, code_dim: int, scale: float = 1.0):
    """Codes e_i ~ N(0, scale^2 I), each counted as one vector equal to itself
    (N_i = 1, m_i = e_i), so the first update moves a used code a fraction
    (1 - gamma) n_i / (gamma + (1 - gamma) n_i) of the way to its mean assignment."""
    codebook = scale * jax.random.normal(key, (codebook_size, code_dim))
    cluster_size = jnp.ones((codebook_size,))
    # m = N e, a buffer of its own (the trainer donates the state's buffers)
    return {"codebook": codebook, "cluster_size": cluster_size, "code_sum": codebook * cluster_size[:, None]}


def nearest_codes(z_MD, codebook_KD):
    """argmin_k ||z_m - e_k||^2 for each row (M,) int32 (van den Oord et al. 2017, eq. 1)."""
    distances_MK = (jnp.sum(z_MD**2, axis=1, keepdims=True) - 2.0 * z_MD @ codebook_KD.T
                    + jnp.sum(codebook_KD**2, axis=1)[None, :])
    return jnp.argmin(distances_MK, axis=1).astype(jnp.int32)


def straight_through(z_e, z_q):
    """z_q in the forward pass, identity gradient to z_e in the backward pass
    (van den Oord et al. 2017, sec. 3.2)."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def ema_codebook_update(state, z_MD, codes_M, *, decay: float, epsilon: float = 1e-5):
    """The codebook state after one batch of assignments (module docstring; van den
    Oord et al. 2017, App. A.1, eqs. 6-8). z_MD are encoder outputs (constants here)."""
    z_MD = jax.lax.stop_gradient(z_MD)
    size = state["codebook"].shape[0]
    one_hot_MK = jax.nn.one_hot(codes_M, size, dtype=z_MD.dtype)
    counts_K = jnp.sum(one_hot_MK, axis=0)
    sums_KD = one_hot_MK.T @ z_MD
    cluster_size = decay * state["cluster_size"] + (1.0 - decay) * counts_K
    code_sum = decay * state["code_sum"] + (1.0 - decay) * sums_KD
    total = jnp.sum(cluster_size)
    smoothed = (cluster_size + epsilon) / (total + size * epsilon) * total
    return {"codebook": code_sum / smoothed[:, None], "cluster_size": cluster_size, "code_sum": code_sum}


def codebook_perplexity(codes_M, codebook_size: int):
    """exp(H(p)), p the fraction of assignments to each code: the effective number
    of codes used (1: one code; K: all equally)."""
    p_K = jnp.mean(jax.nn.one_hot(codes_M, codebook_size), axis=0)
    return jnp.exp(-jnp.sum(jnp.where(p_K > 0, p_K * jnp.log(jnp.where(p_K > 0, p_K, 1.0)), 0.0)))
