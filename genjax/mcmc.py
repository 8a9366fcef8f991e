"""Gradient-based MCMC on a batch of independent chains.

Every function takes the chains as one array x of shape (N, ...): N independent
chains, each state of any trailing shape (points (N, D), images (N, H, W, C)).
Step sizes are a scalar or one per chain, shape (N,). The target enters through
a batched function of x:

    score_fn(x)       -> grad_x log p(x), the shape of x          (ULA)
    log_prob_fn(x)    -> log p(x) up to a constant, shape (N,)    (MALA)
    energy_grad_fn(x) -> grad_x E(x), the shape of x, p ~ e^{-E}  (SGLD)

Chains are independent: log_prob_fn must compute each chain's value from its own
state only, so that the gradient of the sum over chains is each chain's gradient.

Randomness: step s of a chain run uses the key `fold_in(key, s)` (the trainer's
convention), so a run of S steps is a prefix of a run of S' > S steps with the
same key. Within a step, `langevin_step` and `sgld_step` draw their Gaussian
noise straight from the key they get; `mala_sample` splits the step's key into
one for the proposal and one for the accept test.

The loops are one `lax.fori_loop` with a static trip count, so each run is a
single compiled program even when called outside `jax.jit`; every function is
safe under `jax.jit` and `jax.vmap` (e.g. vmapped over step sizes).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genjax.core import check_int


def _concrete(value):
    """`value` as a float64 NumPy array, or None when it is traced (unknown here)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    """Raises a ValueError naming `value` when a concrete `value` has an entry that is
    not finite and > 0 (>= 0 with allow_zero). Traced values pass: their bounds are
    the caller's to keep."""
    v = _concrete(value)
    if v is None:
        return
    ok = np.isfinite(v) & ((v >= 0) if allow_zero else (v > 0))
    if not np.all(ok):
        bound = ">= 0" if allow_zero else "> 0"
        shown = v.tolist() if v.size <= 8 else f"an array with min {v.min()} and max {v.max()}"
        raise ValueError(f"{name} must be finite and {bound}, got {shown}")


def _per_chain(v, x: jax.Array) -> jax.Array:
    """A scalar or per-chain (N,) value, shaped to broadcast against x of shape (N, ...)."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    if v.shape != x.shape[:1]:
        raise ValueError(f"a per-chain value has shape {v.shape}; expected () or ({x.shape[0]},) for x of shape {x.shape}")
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


def _check_chains(x: jax.Array) -> None:
    if jnp.ndim(x) < 1:
        raise ValueError(f"x_init must have a leading chain axis (N, ...), got shape {jnp.shape(x)}")


def _per_chain_sum(v: jax.Array) -> jax.Array:
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=1)


# --------------------------------------------------------------------------------------
# Unadjusted Langevin (ULA)
# --------------------------------------------------------------------------------------


def langevin_step(key, score_fn: Callable, x: jax.Array, step_size) -> tuple[jax.Array, jax.Array]:
    """One unadjusted Langevin step (ULA; Roberts & Tweedie 1996, sec. 1.4), the
    Euler-Maruyama discretisation of the Langevin diffusion dx = grad log p(x) dt + sqrt(2) dW:

        x' = x + h score(x) + sqrt(2 h) z,   z ~ N(0, I) drawn from `key`.

    Returns (x', x + h score(x)): the new state and its noise-free mean. `step_size`
    h is a scalar or per chain (N,). The step itself checks nothing, so callers that
    compute h from the data (the diffusion corrector) behave alike under jit and
    eagerly; `langevin_sample` checks its arguments.
    """
    step = _per_chain(step_size, x)
    z = jax.random.normal(key, x.shape, x.dtype)
    x_mean = x + step * score_fn(x)
    return x_mean + jnp.sqrt(2.0 * step) * z, x_mean


def langevin_sample(key, score_fn: Callable, x_init: jax.Array, step_size=1e-2, num_steps: int = 500) -> jax.Array:
    """`num_steps` unadjusted Langevin steps from `x_init` (Roberts & Tweedie 1996).

    ULA has no accept/reject step, so its stationary law is p only as h -> 0: the bias
    is O(h) (Durmus & Moulines 2017). Step s uses `fold_in(key, s)`. Returns the
    final state, the shape of `x_init`.
    """
    num_steps = check_int("num_steps", num_steps, 1)
    _check_positive("step_size", step_size)
    _check_chains(x_init)
    _per_chain(step_size, x_init)  # shape check before tracing the loop

    def body(s, x):
        return langevin_step(jax.random.fold_in(key, s), score_fn, x, step_size)[0]

    return jax.lax.fori_loop(0, num_steps, body, x_init)


# --------------------------------------------------------------------------------------
# Metropolis-adjusted Langevin (MALA)
# --------------------------------------------------------------------------------------


def _value_and_grad(log_prob_fn: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-chain log p (N,) and its gradient, as jax.grad of the sum over chains."""

    def total(x):
        log_p_N = log_prob_fn(x)
        return jnp.sum(log_p_N), log_p_N

    (_, log_p_N), grad = jax.value_and_grad(total, has_aux=True)(x)
    return log_p_N, grad


def _log_q(y, x, grad_x, step) -> jax.Array:
    """log q(y | x) of the Langevin proposal N(x + h grad log p(x), 2h I), per chain, up
    to the normaliser -(D/2) log(4 pi h). The normaliser is the same for q(y|x) and
    q(x|y) (one h per chain), so it cancels exactly in the Hastings ratio."""
    r = y - x - step * grad_x
    return -_per_chain_sum(r * r / (4.0 * step))


def mala_sample(key, log_prob_fn: Callable, x_init: jax.Array, step_size=1e-1, num_steps: int = 500):
    """Metropolis-adjusted Langevin (MALA; Besag 1994; Roberts & Tweedie 1996, sec. 1.4).

    Each step proposes y = x + h grad log p(x) + sqrt(2h) z per chain and accepts it
    with probability min(1, [p(y) q(x|y)] / [p(x) q(y|x)]), q(y|x) = N(y; x + h grad
    log p(x), 2h I), computed in log space. The chain then has p as its stationary
    law for any h > 0; h only sets how fast it mixes. For a Gaussian target the
    acceptance rate that maximises efficiency in high dimension is about 0.574
    (Roberts & Rosenthal 1998).

    A proposal whose log p or reverse proposal density is not finite (outside the
    support, an overflow, a NaN) is rejected. A chain started where log p = -inf
    accepts any finite proposal.

    The gradient is jax.grad of sum(log_prob_fn(x)), each chain's own gradient since
    chains are independent. Step s uses `fold_in(key, s)`, split into the proposal's
    key and the accept test's key. Returns (x, acceptance_rate): the final state and
    the fraction of accepted proposals over all chains and steps (a scalar).
    """
    num_steps = check_int("num_steps", num_steps, 1)
    _check_positive("step_size", step_size)
    _check_chains(x_init)
    step = _per_chain(step_size, x_init)

    def body(s, carry):
        x, log_p_x, grad_x, accepted_N = carry
        k_prop, k_accept = jax.random.split(jax.random.fold_in(key, s))
        z = jax.random.normal(k_prop, x.shape, x.dtype)
        y = x + step * grad_x + jnp.sqrt(2.0 * step) * z
        log_p_y, grad_y = _value_and_grad(log_prob_fn, y)
        log_q_rev = _log_q(x, y, grad_y, step)
        log_ratio = log_p_y - log_p_x + log_q_rev - _log_q(y, x, grad_x, step)
        log_ratio = jnp.where(jnp.isfinite(log_p_y) & jnp.isfinite(log_q_rev), log_ratio, -jnp.inf)
        log_u = jnp.log(jax.random.uniform(k_accept, log_p_y.shape, log_p_y.dtype))
        accept_N = log_u < log_ratio  # False for a NaN ratio: rejected
        keep = jnp.reshape(accept_N, accept_N.shape + (1,) * (x.ndim - 1))
        return (
            jnp.where(keep, y, x),
            jnp.where(accept_N, log_p_y, log_p_x),
            jnp.where(keep, grad_y, grad_x),
            accepted_N + accept_N.astype(jnp.int32),
        )

    log_p, grad = _value_and_grad(log_prob_fn, x_init)
    init = (x_init, log_p, grad, jnp.zeros(x_init.shape[:1], jnp.int32))
    x, _, _, accepted_N = jax.lax.fori_loop(0, num_steps, body, init)
    return x, jnp.sum(accepted_N) / (accepted_N.shape[0] * num_steps)


# --------------------------------------------------------------------------------------
# Stochastic gradient Langevin dynamics as used to train energy-based models
# --------------------------------------------------------------------------------------


def _check_box(clip_x):
    if clip_x is None:
        return None
    try:
        lo, hi = clip_x
    except (TypeError, ValueError):
        raise ValueError(f"clip_x must be a pair (low, high), got {clip_x!r}") from None
    lo_c, hi_c = _concrete(lo), _concrete(hi)
    if lo_c is not None and hi_c is not None and not np.all(lo_c < hi_c):
        raise ValueError(f"clip_x must have low < high, got {clip_x!r}")
    return lo, hi


def sgld_step(key, energy_grad_fn: Callable, x: jax.Array, *, step_size, noise_scale,
              clip_grad=None, clip_x=None) -> jax.Array:
    """One Langevin step on an energy with its gradient step and noise scale set apart
    (Welling & Teh 2011, eq. 4, with a full gradient; Du & Mordatch 2019, sec. 2):

        x' = clip_x( x - h clip_grad(grad E(x)) + sigma z ),   z ~ N(0, I) from `key`.

    clip_grad c > 0 clips each element of the gradient to [-c, c]; clip_x = (low, high)
    clamps the new state to that box (e.g. (0, 1) for images). Both are what EBM
    training does to keep short-run chains stable; they change the chain's law. h and
    sigma are scalars or per chain (N,).

    With sigma = sqrt(2h) and E = -log p, so grad E = -score, this is `langevin_step`:
    the same noise for the same key, and the same state.
    """
    g = energy_grad_fn(x)
    if clip_grad is not None:
        g = jnp.clip(g, -clip_grad, clip_grad)
    z = jax.random.normal(key, x.shape, x.dtype)
    # Written as `langevin_step` is, with score = -g, so that the two compile alike.
    x = x + _per_chain(step_size, x) * -g + _per_chain(noise_scale, x) * z
    if clip_x is not None:
        x = jnp.clip(x, clip_x[0], clip_x[1])
    return x


def sgld_sample(key, energy_grad_fn: Callable, x_init: jax.Array, *, step_size, noise_scale, num_steps: int,
                clip_grad=None, clip_x=None) -> jax.Array:
    """`num_steps` of `sgld_step` from `x_init`, the short-run sampler of energy-based
    model training (Du & Mordatch 2019, "Implicit Generation and Generalization in
    Energy-Based Models", Algorithm 1; Welling & Teh 2011).

    ULA is the case noise_scale = sqrt(2 step_size), energy_grad_fn = -score_fn.
    Otherwise, in the small-step limit the chain samples exp(-E / T) at temperature
    T = noise_scale^2 / (2 step_size); EBM practice takes T << 1 (step 1, noise 0.01
    in JEM, Grathwohl et al. 2020), short-run chains that move fast toward low
    energy rather than samplers of exp(-E). Step s uses `fold_in(key, s)`. Returns
    the final state, the shape of `x_init`.
    """
    num_steps = check_int("num_steps", num_steps, 1)
    _check_positive("step_size", step_size)
    _check_positive("noise_scale", noise_scale, allow_zero=True)
    if clip_grad is not None:
        _check_positive("clip_grad", clip_grad)
    clip_x = _check_box(clip_x)
    _check_chains(x_init)
    _per_chain(step_size, x_init)
    _per_chain(noise_scale, x_init)

    def body(s, x):
        return sgld_step(jax.random.fold_in(key, s), energy_grad_fn, x, step_size=step_size,
                         noise_scale=noise_scale, clip_grad=clip_grad, clip_x=clip_x)

    return jax.lax.fori_loop(0, num_steps, body, x_init)
