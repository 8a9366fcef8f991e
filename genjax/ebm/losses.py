"""Three objectives that train an energy E(x) without its normaliser Z.

Notation: energy_fn(x) -> (N,) energies of a batch x of shape (N, ...), the model
density p(x) = exp(-E(x)) / Z, and its score s(x) = grad_x log p(x) = -grad_x E(x)
(Z drops out of the score; `score_of`). Every loss returns (scalar, metrics dict)
and is a mean over the batch.

* `contrastive_divergence_loss`: the maximum-likelihood gradient
  grad_theta [E_data E - E_model E] with model samples supplied by the caller
  (Hinton 2002; Du & Mordatch 2019, Algorithm 1), plus their energy-magnitude
  regulariser alpha (E(x+)^2 + E(x-)^2).
* `sliced_score_matching_loss`: Hyvarinen's (2005, Theorem 1) objective
  E_p[tr(grad s) + ||s||^2 / 2] with the trace replaced by random projections
  (Song et al. 2019, "Sliced Score Matching"); SSM-VR by default.
* `denoising_score_matching_loss`: regress s on the score of the Gaussian
  corruption kernel (Vincent 2011).
"""
from typing import Callable

import jax
import jax.numpy as jnp


def score_of(energy_fn: Callable) -> Callable:
    """s(x) = -grad_x E(x), batched: the gradient of the sum of per-example energies
    is each example's own gradient because examples do not interact."""
    grad = jax.grad(lambda x: jnp.sum(energy_fn(x)))
    return lambda x: -grad(x)


def _per_example_sum(v: jax.Array) -> jax.Array:
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=1)


def contrastive_divergence_loss(energy_fn: Callable, x_pos: jax.Array, x_neg: jax.Array, *, alpha: float = 1.0):
    """Contrastive divergence with regularised energies (Du & Mordatch 2019, Algorithm 1
    and their energy-magnitude regulariser):

        L = mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2),

    x+ data, x- approximate model samples (short-run SGLD chains). x- is treated as a
    constant (stop_gradient), so grad_theta of the first two terms is the
    maximum-likelihood gradient grad_theta(-log p) = grad E(x+) - E_p[grad E] with the
    model expectation estimated by the chains (Hinton 2002). The regulariser keeps
    energies near 0, which otherwise drift freely (only differences matter).

    Metrics: "cd" (the first two terms: a *gap*, not a likelihood), "energy_pos",
    "energy_neg", "energy_reg".
    """
    e_pos_N = energy_fn(x_pos)
    e_neg_N = energy_fn(jax.lax.stop_gradient(x_neg))
    cd = jnp.mean(e_pos_N) - jnp.mean(e_neg_N)
    reg = alpha * (jnp.mean(e_pos_N**2) + jnp.mean(e_neg_N**2))
    return cd + reg, {"cd": cd, "energy_pos": jnp.mean(e_pos_N), "energy_neg": jnp.mean(e_neg_N),
                      "energy_reg": reg}


def sliced_score_matching_loss(score_fn: Callable, key, x: jax.Array, *, num_projections: int = 1,
                               variance_reduced: bool = True):
    """Sliced score matching (Song et al. 2019): with v ~ N(0, I),

        SSM     E_x E_v [ v^T (grad_x s(x)) v + (v^T s(x))^2 / 2 ]
        SSM-VR  E_x E_v [ v^T (grad_x s(x)) v ] + E_x ||s(x)||^2 / 2

    Both equal Hyvarinen's score-matching objective E_x[tr(grad_x s) + ||s||^2 / 2]
    in expectation over v (E[v v^T] = I), which is the Fisher divergence
    E_x ||s - grad log p_data||^2 / 2 up to a constant (Hyvarinen 2005, Theorem 1).
    SSM-VR replaces the projected square by its expectation over Gaussian v, which
    removes that term's variance. The directional derivative (grad_x s) v is one
    Jacobian-vector product per projection (forward-over-reverse for s = -grad E),
    never the full Jacobian.

    `score_fn(x)` must be batched with independent examples, so that the JVP along a
    batch of directions gives each example its own J v. Metrics: "trace" (the first
    term), "score_sq" (E ||s||^2 / 2, or the projected square for plain SSM).
    """
    v_PN = jax.random.normal(key, (num_projections,) + x.shape, x.dtype)

    def one(v):
        s, jv = jax.jvp(score_fn, (x,), (v,))
        trace_N = _per_example_sum(v * jv)
        square_N = 0.5 * _per_example_sum(s * s) if variance_reduced else 0.5 * _per_example_sum(v * s) ** 2
        return trace_N, square_N

    trace_PN, square_PN = jax.lax.map(one, v_PN)
    trace, square = jnp.mean(trace_PN), jnp.mean(square_PN)
    return trace + square, {"trace": trace, "score_sq": square}


def denoising_score_matching_loss(score_fn: Callable, key, x: jax.Array, *, sigma: float):
    """Denoising score matching at one noise level (Vincent 2011), weighted by sigma^2:

        L = E_x E_eps || sigma s(x + sigma eps) + eps ||^2 / 2,   eps ~ N(0, I),

    which is sigma^2 times Vincent's E ||s(x~) - (x - x~) / sigma^2||^2 / 2 (the
    score of the corruption kernel q(x~ | x) = N(x, sigma^2 I) is -(x~ - x)/sigma^2).
    Its minimiser is the score of the smoothed data law p_data * N(0, sigma^2 I), so
    for small sigma the energy approaches that of the data (up to a constant). The
    sigma^2 weight makes the loss O(1) for any sigma (Song & Ermon 2019, sec. 4.2),
    so gradient clipping means the same thing at every noise level.

    At the optimum the loss is (D - sigma^2 E ||grad log p_sigma(x~)||^2) / 2; for
    Gaussian data N(mu, Sigma) that is (D - sigma^2 tr((Sigma + sigma^2 I)^{-1})) / 2.
    """
    eps = jax.random.normal(key, x.shape, x.dtype)
    r = sigma * score_fn(x + sigma * eps) + eps
    loss = 0.5 * jnp.mean(_per_example_sum(r * r))
    return loss, {"dsm": loss}
