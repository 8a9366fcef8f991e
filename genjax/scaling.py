"""Scaling laws: fitting, confidence intervals and the compute-optimal frontier.

Two families of fitted law:

* Chinchilla's parametric law (Hoffmann et al. 2022, eq. 2)

      L(N, D) = E + A / N^alpha + B / D^beta,

  fitted as in their approach 3 (section 3.3, appendix D.2): minimise

      sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )

  over (a, b, e, alpha, beta) = (log A, log B, log E, alpha, beta) with L-BFGS,
  from a grid of starting points, keeping the best. `fit_chinchilla`; percentile
  bootstrap intervals over resampled runs in `bootstrap_chinchilla`.

* Kaplan et al. 2020 single-variable power laws (eqs. 1.1-1.3)

      L(N) = (N_c / N)^alpha_N,  L(D) = (D_c / D)^alpha_D,  L(C) = (C_c / C)^alpha_C,

  optionally plus an irreducible term E, fitted by least squares on log L
  (`fit_power_law`).

Compute is approximated as C = 6 N D training FLOPs (Kaplan et al. 2020, section
2.1: about 2N FLOPs per token forward and 4N backward, dropping the attention term
that grows with context length). Under that approximation the compute-optimal
split of a Chinchilla law is closed-form (`compute_optimal`, Hoffmann et al. 2022,
eq. 4).

All N, D, L, C are 1-D arrays of positive numbers; every fit works on their logs.
The fitters run L-BFGS (optax, zoom line search) as a jitted while-loop vmapped
over chunks of starting points, so a fit, or a whole bootstrap, is one compiled
program. Values are float32 unless jax_enable_x64 is set.
"""
import itertools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The starting grid of Hoffmann et al. 2022, appendix D.2.
PAPER_ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)
PAPER_BETAS = (0.0, 0.5, 1.0, 1.5, 2.0)
PAPER_ES = (-1.0, -0.5, 0.0, 0.5, 1.0)
PAPER_AS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
PAPER_BS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, section 3.3.
_CHUNK = 256  # starts advanced together by one vmapped L-BFGS loop


class ChinchillaLaw(NamedTuple):
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""

    E: jax.Array
    A: jax.Array
    B: jax.Array
    alpha: jax.Array
    beta: jax.Array


class ChinchillaFit(NamedTuple):
    """A fitted Chinchilla law and the summed Huber objective at the optimum.

    Has the fields of `ChinchillaLaw`, so every function taking a law takes a fit.
    """

    E: jax.Array
    A: jax.Array
    B: jax.Array
    alpha: jax.Array
    beta: jax.Array
    loss: jax.Array


class ChinchillaBootstrap(NamedTuple):
    """Bootstrap refits and percentile intervals.

    samples: a `ChinchillaFit` whose fields have a leading axis of num_samples.
    a_S, b_S: frontier exponents of each refit (see `frontier_exponents`).
    low, high: dicts over "E", "A", "B", "alpha", "beta", "a", "b" of the
      lower and upper interval ends.
    """

    samples: ChinchillaFit
    a_S: jax.Array
    b_S: jax.Array
    low: dict
    high: dict


class PowerLawFit(NamedTuple):
    """L(x) = E + (x_c / x)^alpha (Kaplan et al. 2020, eqs. 1.1-1.3; E = 0 there).

    loss is the sum of squared residuals of log L at the optimum.
    """

    x_c: jax.Array
    alpha: jax.Array
    E: jax.Array
    loss: jax.Array


# ----------------------------------------------------------------------------
# Input checks: shapes always; values only when concrete (not under a trace).


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_1d_positive(name: str, x) -> jax.Array:
    x = jnp.asarray(x, dtype=jnp.result_type(float))
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"{name} has shape {x.shape}; expected a non-empty 1-D array")
    if _is_concrete(x):
        bad = np.asarray(~(jnp.isfinite(x) & (x > 0)))
        if bad.any():
            value = np.asarray(x)[bad][0]
            raise ValueError(f"{name} holds {value}; expected positive finite values")
    return x


def _check_same_length(**arrays) -> int:
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"lengths differ: {lengths}; expected one run per entry in each")
    return next(iter(lengths.values()))


def _check_runs(N, D, L) -> None:
    num_runs = _check_same_length(N=N, D=D, L=L)
    if num_runs < 5:
        raise ValueError(f"got {num_runs} runs; expected at least 5 to fit 5 parameters")


def _check_positive_scalar(name: str, value) -> None:
    if _is_concrete(value) and not float(value) > 0:
        raise ValueError(f"{name} is {value}; expected a positive number")


# ----------------------------------------------------------------------------
# The law, its objective and the multi-start L-BFGS engine.


def chinchilla_loss(law, N, D) -> jax.Array:
    """E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2); broadcasts N, D."""
    N = jnp.asarray(N, dtype=jnp.result_type(float))
    D = jnp.asarray(D, dtype=jnp.result_type(float))
    return law.E + law.A * N ** (-law.alpha) + law.B * D ** (-law.beta)


def chinchilla_objective(theta_P, log_N, log_D, log_L, delta=HUBER_DELTA) -> jax.Array:
    """Summed Huber loss of the predicted log L (Hoffmann et al. 2022, eq. in D.2).

    theta_P = (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e). The
    prediction LSE(a - alpha log N, b - beta log D, e) is log of eq. 2, computed
    without overflow.
    """
    a, b, e, alpha, beta = theta_P
    terms_3R = jnp.stack(
        [a - alpha * log_N, b - beta * log_D, jnp.broadcast_to(e, log_N.shape)]
    )
    log_pred_R = jax.nn.logsumexp(terms_3R, axis=0)
    return jnp.sum(optax.losses.huber_loss(log_pred_R, log_L, delta=delta))


def _lbfgs(objective: Callable, x0_P: jax.Array, max_iter: int, ftol: float, patience: int):
    """Minimises `objective` from x0 with optax L-BFGS; returns (x, value).

    Stops after max_iter iterations, or after `patience` iterations in a row that
    each lower the value by at most ftol * |value|. The Huber objective is nearly
    piecewise linear (delta is far below typical residuals), so L-BFGS often
    makes no progress for an iteration at a kink and then moves on; stopping at
    the first such iteration leaves fits measurably short of the optimum.
    """
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def not_done(carry):
        it, stalls = carry[0], carry[1]
        return (it < max_iter) & (stalls < patience)

    def step(carry):
        it, stalls, x, state, value = carry
        v, g = value_and_grad(x, state=state)
        updates, state = opt.update(g, state, x, value=v, grad=g, value_fn=objective)
        x = optax.apply_updates(x, updates)
        new_value = optax.tree.get(state, "value")
        # NaN progress counts as a stall, so a diverged start ends.
        moved = (value - new_value) > ftol * jnp.abs(new_value)
        stalls = jnp.where(moved, 0, stalls + 1)
        return it + 1, stalls, x, state, new_value

    carry = (0, 0, x0_P, opt.init(x0_P), objective(x0_P))
    _, _, x_P, _, _ = jax.lax.while_loop(not_done, step, carry)
    return x_P, objective(x_P)


def _best_of(objective: Callable, inits_GP: jax.Array, max_iter: int, ftol: float, patience: int):
    """Runs L-BFGS from every row of inits_GP at once and keeps the lowest value."""
    # Vectorised over chunks of starts, one chunk after another: a vmapped
    # while-loop runs until its slowest start ends, so chunking keeps a few slow
    # starts from holding the whole grid.
    run = lambda x0: _lbfgs(objective, x0, max_iter, ftol, patience)
    x_GP, value_G = jax.lax.map(run, inits_GP, batch_size=min(_CHUNK, inits_GP.shape[0]))
    # Starts that diverge give NaN; they never win.
    value_G = jnp.where(jnp.isnan(value_G), jnp.inf, value_G)
    best = jnp.argmin(value_G)
    return x_GP[best], value_G[best]


def _theta_to_fit(theta_P, loss) -> ChinchillaFit:
    a, b, e, alpha, beta = theta_P
    return ChinchillaFit(E=jnp.exp(e), A=jnp.exp(a), B=jnp.exp(b), alpha=alpha, beta=beta, loss=loss)


def _fit_to_theta(law) -> jax.Array:
    return jnp.stack(
        [jnp.log(law.A), jnp.log(law.B), jnp.log(law.E), law.alpha, law.beta]
    ).astype(jnp.result_type(float))


def init_grid(
    *,
    alphas: Sequence[float] = PAPER_ALPHAS,
    betas: Sequence[float] = PAPER_BETAS,
    es: Sequence[float] = PAPER_ES,
    a_s: Sequence[float] = PAPER_AS,
    b_s: Sequence[float] = PAPER_BS,
) -> jax.Array:
    """Starting points (G, 5) in the order (a, b, e, alpha, beta), all combinations.

    The defaults are the grid of Hoffmann et al. 2022, appendix D.2 (4500 points).
    """
    axes = {"a_s": a_s, "b_s": b_s, "es": es, "alphas": alphas, "betas": betas}
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"{name} is empty; expected at least one starting value")
    rows = list(itertools.product(a_s, b_s, es, alphas, betas))
    return jnp.asarray(rows, dtype=jnp.result_type(float))


def _check_inits(inits_GP, width: int) -> jax.Array:
    inits_GP = jnp.asarray(inits_GP, dtype=jnp.result_type(float))
    if inits_GP.ndim != 2 or inits_GP.shape[1] != width or inits_GP.shape[0] == 0:
        raise ValueError(
            f"inits has shape {inits_GP.shape}; expected (num_starts >= 1, {width})"
        )
    return inits_GP


def _check_solver(max_iter, patience) -> None:
    for name, value in (("max_iter", max_iter), ("patience", patience)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} is {value!r}; expected a positive int")


def _chinchilla_best(log_N, log_D, log_L, inits_GP, delta, max_iter, ftol, patience):
    objective = lambda theta: chinchilla_objective(theta, log_N, log_D, log_L, delta)
    theta_P, loss = _best_of(objective, inits_GP, max_iter, ftol, patience)
    return _theta_to_fit(theta_P, loss)


_chinchilla_best_jit = jax.jit(_chinchilla_best, static_argnames=("max_iter", "ftol", "patience"))


def fit_chinchilla(
    N,
    D,
    L,
    *,
    inits: Optional[jax.Array] = None,
    delta: float = HUBER_DELTA,
    max_iter: int = 500,
    ftol: float = 1e-7,
    patience: int = 10,
) -> ChinchillaFit:
    """Fits L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3).

    Minimises `chinchilla_objective` (Huber, delta = 1e-3 as in section 3.3) with
    L-BFGS from every row of `inits` (default: the paper's 4500-point grid, see
    `init_grid`, about 90 CPU-seconds for 64 runs; pass a smaller grid to go
    faster) and returns the best.

    Args:
      N: (R,) parameter counts, one per run.
      D: (R,) training tokens.
      L: (R,) final losses (positive).
      inits: (G, 5) starting points (a, b, e, alpha, beta).
      delta: Huber threshold on log-loss residuals.
      max_iter: L-BFGS iterations per start at most.
      ftol, patience: stop a start after `patience` iterations in a row that each
        gain at most ftol * |value|.
    """
    N = _as_1d_positive("N", N)
    D = _as_1d_positive("D", D)
    L = _as_1d_positive("L", L)
    _check_runs(N, D, L)
    _check_positive_scalar("delta", delta)
    _check_solver(max_iter, patience)
    inits_GP = init_grid() if inits is None else _check_inits(inits, 5)
    return _chinchilla_best_jit(
        jnp.log(N), jnp.log(D), jnp.log(L), inits_GP, delta,
        max_iter=max_iter, ftol=ftol, patience=patience,
    )


def local_inits(law, *, steps=(2.0, 2.0, 0.5, 0.1, 0.1)) -> jax.Array:
    """A small start set (11, 5) around a law: the point, then +-step on each axis.

    Axes in the order (a, b, e, alpha, beta). Optional starts for bootstrap
    refits (`bootstrap_chinchilla(..., inits=local_inits(fit))`), whose optima
    lie near the full-data optimum.
    """
    theta_P = _fit_to_theta(law)
    steps_P = jnp.asarray(steps, dtype=theta_P.dtype)
    if steps_P.shape != (5,):
        raise ValueError(f"steps has shape {steps_P.shape}; expected (5,)")
    offsets_2PP = jnp.stack([jnp.diag(steps_P), -jnp.diag(steps_P)])
    return jnp.concatenate([theta_P[None], theta_P + offsets_2PP.reshape(10, 5)])


# ----------------------------------------------------------------------------
# Compute-optimal frontier.


def training_flops(N, D) -> jax.Array:
    """C = 6 N D: training FLOPs of an N-parameter model on D tokens (Kaplan 2020, 2.1)."""
    return 6.0 * jnp.asarray(N, dtype=jnp.result_type(float)) * D


def frontier_exponents(law) -> tuple[jax.Array, jax.Array]:
    """(a, b) = (beta / (alpha + beta), alpha / (alpha + beta)): N_opt ~ C^a, D_opt ~ C^b.

    Hoffmann et al. 2022, eq. 4.
    """
    total = law.alpha + law.beta
    return law.beta / total, law.alpha / total


def compute_optimal(law, C) -> tuple[jax.Array, jax.Array]:
    """The (N_opt, D_opt) minimising L(N, D) subject to 6 N D = C (Hoffmann 2022, eq. 4).

    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with G = (alpha A / (beta B))^(1/(alpha+beta)).
    D_opt is computed as (C/6) / N_opt, the same number since a + b = 1, so that
    6 N_opt D_opt = C holds to rounding.
    """
    C = jnp.asarray(C, dtype=jnp.result_type(float))
    if _is_concrete(C) and bool(np.any(np.asarray(~(C > 0)))):
        raise ValueError(f"C holds {np.asarray(C)[np.asarray(~(C > 0))][0]}; expected positive FLOPs")
    a, _ = frontier_exponents(law)
    log_G = (jnp.log(law.alpha * law.A) - jnp.log(law.beta * law.B)) / (law.alpha + law.beta)
    tokens_params = C / 6.0  # N * D on the frontier
    N_opt = jnp.exp(log_G + a * jnp.log(tokens_params))
    return N_opt, tokens_params / N_opt


# ----------------------------------------------------------------------------
# Bootstrap.


def _bootstrap_all(key, log_N, log_D, log_L, inits_GP, delta, num_samples, max_iter, ftol, patience):
    num_runs = log_N.shape[0]

    def refit(key_s):
        idx_R = jax.random.randint(key_s, (num_runs,), 0, num_runs)
        return _chinchilla_best(log_N[idx_R], log_D[idx_R], log_L[idx_R], inits_GP, delta, max_iter, ftol, patience)

    return jax.vmap(refit)(jax.random.split(key, num_samples))


_bootstrap_all_jit = jax.jit(_bootstrap_all, static_argnames=("num_samples", "max_iter", "ftol", "patience"))


def bootstrap_chinchilla(
    key: jax.Array,
    N,
    D,
    L,
    *,
    num_samples: int = 200,
    start=None,
    inits: Optional[jax.Array] = None,
    level: float = 0.95,
    delta: float = HUBER_DELTA,
    max_iter: int = 500,
    ftol: float = 1e-7,
    patience: int = 10,
) -> ChinchillaBootstrap:
    """Percentile bootstrap intervals for a Chinchilla fit (Efron & Tibshirani 1993, ch. 13).

    Resamples the runs with replacement num_samples times (deterministic in
    `key`), refits each resample, and reports the (1 - level)/2 and (1 + level)/2
    quantiles of E, A, B, alpha, beta and the frontier exponents a, b (the order
    statistics at or just outside them: a percentile interval never narrower).

    Each refit starts from `inits` (G, 5) if given, else from the point `start`
    alone; `start` defaults to a full-grid `fit_chinchilla` on all the runs.
    A resample's optimum lies near the full-data optimum, which is what makes
    hundreds of refits cheap. `local_inits(start)` adds ten nearby starts: on
    64 synthetic runs it lowered the mean refit objective by 0.07% and moved
    the interval ends by under 1e-4, at about 15 times the cost.
    """
    N = _as_1d_positive("N", N)
    D = _as_1d_positive("D", D)
    L = _as_1d_positive("L", L)
    _check_runs(N, D, L)
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples is {num_samples!r}; expected an int >= 2")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is {level}; expected a number in (0, 1)")
    _check_positive_scalar("delta", delta)
    _check_solver(max_iter, patience)
    if inits is None:
        if start is None:
            start = fit_chinchilla(N, D, L, delta=delta, max_iter=max_iter, ftol=ftol, patience=patience)
        inits_GP = _fit_to_theta(start)[None]
    else:
        inits_GP = _check_inits(inits, 5)
    samples = _bootstrap_all_jit(
        key, jnp.log(N), jnp.log(D), jnp.log(L), inits_GP, delta,
        num_samples=num_samples, max_iter=max_iter, ftol=ftol, patience=patience,
    )
    a_S, b_S = frontier_exponents(samples)
    values = {
        "E": samples.E, "A": samples.A, "B": samples.B,
        "alpha": samples.alpha, "beta": samples.beta, "a": a_S, "b": b_S,
    }
    # The order statistics just outside the two quantiles (never interpolated), so
    # low <= high holds exactly, also when every resample gives the same value (an
    # interpolated quantile could then invert the interval by rounding).
    low = {name: jnp.nanquantile(v, (1.0 - level) / 2.0, method="lower") for name, v in values.items()}
    high = {name: jnp.nanquantile(v, (1.0 + level) / 2.0, method="higher") for name, v in values.items()}
    return ChinchillaBootstrap(samples=samples, a_S=a_S, b_S=b_S, low=low, high=high)


# ----------------------------------------------------------------------------
# Kaplan-style single-variable power laws.


def power_law(fit, x) -> jax.Array:
    """E + (x_c / x)^alpha (Kaplan et al. 2020, eqs. 1.1-1.3 with an optional E)."""
    x = jnp.asarray(x, dtype=jnp.result_type(float))
    return fit.E + (fit.x_c / x) ** fit.alpha


def _log_linear_fit(log_x, log_L):
    # log L = alpha log x_c - alpha log x: a straight line; centring keeps float32 exact.
    t = log_x - jnp.mean(log_x)
    y = log_L - jnp.mean(log_L)
    slope = jnp.sum(t * y) / jnp.sum(t * t)
    alpha = -slope
    intercept = jnp.mean(log_L) - slope * jnp.mean(log_x)  # = alpha log x_c
    residual = log_L - (intercept - alpha * log_x)
    return alpha, intercept, jnp.sum(residual**2)


def _offset_objective(theta_P, log_x, log_L):
    # theta = (e, alpha, k) with E = exp(e), k = alpha log x_c: log L = LSE(e, k - alpha log x).
    e, alpha, k = theta_P
    log_pred = jnp.logaddexp(e, k - alpha * log_x)
    return jnp.sum((log_pred - log_L) ** 2)


def _offset_inits(log_x, log_L, alpha_ls, k_ls):
    # Data-driven starts: E a fraction of min L; for each alpha, k puts the power
    # term through the geometric-mean point; plus the pure power-law fit.
    L_min = jnp.exp(jnp.min(log_L))
    L_mid, log_x_mid = jnp.exp(jnp.mean(log_L)), jnp.mean(log_x)
    rows = []
    for frac in (1e-3, 0.25, 0.5, 0.75, 0.9):
        E0 = frac * L_min
        rows.append(jnp.stack([jnp.log(E0), alpha_ls, k_ls]))
        for alpha0 in (0.03, 0.1, 0.3, 1.0):
            k0 = jnp.log(L_mid - E0) + alpha0 * log_x_mid
            rows.append(jnp.stack([jnp.log(E0), jnp.asarray(alpha0, log_x.dtype), k0]))
    return jnp.stack(rows).astype(log_x.dtype)


def _power_law_core(log_x, log_L, inits_GP, offset, max_iter, ftol, patience):
    alpha_ls, k_ls, loss_ls = _log_linear_fit(log_x, log_L)
    if not offset:
        return PowerLawFit(
            x_c=jnp.exp(k_ls / alpha_ls), alpha=alpha_ls, E=jnp.zeros_like(alpha_ls), loss=loss_ls
        )
    if inits_GP is None:
        inits_GP = _offset_inits(log_x, log_L, alpha_ls, k_ls)
    objective = lambda theta: _offset_objective(theta, log_x, log_L)
    (e, alpha, k), loss = _best_of(objective, inits_GP, max_iter, ftol, patience)
    return PowerLawFit(x_c=jnp.exp(k / alpha), alpha=alpha, E=jnp.exp(e), loss=loss)


_power_law_core_jit = jax.jit(_power_law_core, static_argnames=("offset", "max_iter", "ftol", "patience"))


def fit_power_law(
    x,
    L,
    *,
    offset: bool = False,
    inits: Optional[jax.Array] = None,
    max_iter: int = 500,
    ftol: float = 1e-7,
    patience: int = 10,
) -> PowerLawFit:
    """Fits L(x) = (x_c / x)^alpha, or E + (x_c / x)^alpha, by least squares on log L.

    x is N (parameters), D (tokens) or C (compute) for Kaplan et al. 2020, eqs.
    1.1, 1.2 and 1.3. Without `offset` the fit is a straight line in log-log space,
    solved in closed form. With it, L-BFGS minimises the squared log residuals over
    (e, alpha, k) = (log E, alpha, alpha log x_c) from `inits` (G, 3), by default a
    small data-driven set around the pure power-law fit.
    """
    x = _as_1d_positive("x", x)
    L = _as_1d_positive("L", L)
    num_runs = _check_same_length(x=x, L=L)
    needed = 3 if offset else 2
    if num_runs < needed:
        raise ValueError(f"got {num_runs} runs; expected at least {needed} to fit {needed} parameters")
    _check_solver(max_iter, patience)
    inits_GP = None if inits is None else _check_inits(inits, 3)
    if inits_GP is not None and not offset:
        raise ValueError("inits were given with offset=False; the pure power law needs no starts")
    return _power_law_core_jit(jnp.log(x), jnp.log(L), inits_GP, offset=offset,
        max_iter=max_iter, ftol=ftol, patience=patience,
    )


# ----------------------------------------------------------------------------
# Synthetic data.


def synthetic_losses(key: jax.Array, law, N, D, *, noise_std: float) -> jax.Array:
    """Losses L(N, D) * exp(noise_std * eps), eps ~ N(0, 1) i.i.d. (log-normal noise).

    N and D broadcast together; the noise is a pure function of `key`.
    """
    if _is_concrete(noise_std) and not float(noise_std) >= 0:
        raise ValueError(f"noise_std is {noise_std}; expected a number >= 0")
    clean = chinchilla_loss(law, N, D)
    eps = jax.random.normal(key, clean.shape, dtype=clean.dtype)
    return clean * jnp.exp(noise_std * eps)
