"""Mini-batch optimal-transport coupling of noise and data (OT-CFM, Tong et al.
2023; Pooladian et al. 2023).

A *coupling* decides which noise sample pairs with which data point in the flow
matching loss: `coupling(key, x0, x1) -> (x0, x1)`. Independent pairs need none;
`minibatch_ot_coupling` re-pairs them by the exact OT assignment on the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize


def _assignment_host(cost_NN: np.ndarray) -> np.ndarray:
    rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost_NN, np.float64))
    # rows is 0..N-1 in order and noise `row` goes with data `cols[row]`; invert it
    # so that entry j names the noise paired with data point j.
    perm = np.empty_like(cols)
    perm[cols] = rows
    return perm.astype(np.int32)


def ot_permutation(x0, x1) -> jax.Array:
    """The exact mini-batch OT assignment under squared Euclidean cost.

    Returns perm of shape (N,) such that sum_j ||x0[perm[j]] - x1[j]||^2 is the
    minimum over all permutations. The N x N cost matrix is built in JAX; the
    assignment problem is solved exactly on the host by scipy's
    `linear_sum_assignment` (Jonker-Volgenant, O(N^3)) through `jax.pure_callback`,
    so it works under jit, vmap (one call per vmapped element) and a sharded
    batch (the cost matrix is gathered to one device, so the assignment is over
    the whole global batch). No gradient flows through the pairing. The callback
    runs on the host, so the CPU platform must be enabled (on an accelerator,
    JAX_PLATFORMS must list "cpu" too, e.g. "cuda,cpu").
    """
    if x0.shape != x1.shape:
        raise ValueError(f"ot_permutation: x0 has shape {x0.shape} but x1 has shape {x1.shape}")
    n = x0.shape[0]
    a = jax.lax.stop_gradient(x0).reshape(n, -1)
    b = jax.lax.stop_gradient(x1).reshape(n, -1)
    cost = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
    return jax.pure_callback(
        _assignment_host, jax.ShapeDtypeStruct((n,), jnp.int32), cost, vmap_method="sequential"
    )


def minibatch_ot_coupling(key, x0, x1):
    """Mini-batch OT coupling (OT-CFM, Tong et al. 2023; Pooladian et al. 2023):
    re-pairs the noise with the data by the exact OT assignment on the batch.

    Returns (x0 permuted, x1). `key` is unused (the exact plan between two
    uniform empirical measures of equal size is a permutation, nothing to sample);
    it keeps the coupling signature `coupling(key, x0, x1)`.
    """
    del key
    return x0[ot_permutation(x0, x1)], x1
