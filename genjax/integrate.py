"""The one ODE integration path of genjax.

Diffusion samplers and likelihoods, continuous normalizing flows and flow matching
all integrate through `solve_ode`, and all compute log-likelihoods through
`ode_log_likelihood` (instantaneous change of variables, Chen et al. 2018, Thm. 1).

Conventions: a vector field is `f(y, t) -> dy/dt` with `y` a pytree whose leaves
carry a leading batch axis and `t` a scalar. Integration may run backwards in time
(t1 < t0). Every solver returns `(y1, nfe)`, the number of evaluations of `f`.
"""
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

ADAPTIVE_METHODS = ("adaptive", "tsit5", "dopri5")
FIXED_STEP_METHODS = ("euler", "midpoint", "heun", "rk4")
_EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def batch_max_rms_norm(tree) -> jax.Array:
    """Max over examples of each example's RMS over all its coordinates.

    A batch is many independent ODEs; the step size must satisfy the worst one.
    The usual RMS over the whole batch lets single samples go wrong unnoticed.
    """
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree)]
    sq_sum = 0.0
    count = 0
    for leaf in leaves:
        leaf = jnp.reshape(leaf, (leaf.shape[0], -1)) if leaf.ndim > 0 else leaf[None, None]
        sq_sum = sq_sum + jnp.sum(jnp.abs(leaf) ** 2, axis=1)
        count += leaf.shape[1]
    return jnp.max(jnp.sqrt(sq_sum / count))


def rms_norm(tree) -> jax.Array:
    """RMS over every coordinate of every example: the usual step-size control."""
    leaves = jax.tree_util.tree_leaves(tree)
    total = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves)
    return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


def _fixed_step(vector_field, y0, ts, method):
    def rk_step(y, t_pair):
        t, t_next = t_pair
        h = t_next - t
        add = lambda a, b, c=1.0: jax.tree_util.tree_map(lambda u, v: u + c * v, a, b)
        k1 = vector_field(y, t)
        if method == "euler":
            return add(y, k1, h), None
        if method == "midpoint":
            k2 = vector_field(add(y, k1, h / 2), t + h / 2)
            return add(y, k2, h), None
        if method == "heun":
            k2 = vector_field(add(y, k1, h), t_next)
            return add(y, jax.tree_util.tree_map(lambda a, b: (a + b) / 2, k1, k2), h), None
        # Classical fourth-order Runge-Kutta.
        k2 = vector_field(add(y, k1, h / 2), t + h / 2)
        k3 = vector_field(add(y, k2, h / 2), t + h / 2)
        k4 = vector_field(add(y, k3, h), t_next)
        incr = jax.tree_util.tree_map(lambda a, b, c, d: (a + 2 * b + 2 * c + d) / 6, k1, k2, k3, k4)
        return add(y, incr, h), None

    y1, _ = jax.lax.scan(rk_step, y0, (ts[:-1], ts[1:]))
    return y1


def solve_ode(
    vector_field: Callable,
    y0,
    t0: float,
    t1: float,
    *,
    method: str = "adaptive",
    num_steps: int | None = None,
    ts: jax.Array | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 8192,
    error_norm: str = "batch_max",
):
    """Integrates dy/dt = vector_field(y, t) from t0 to t1.

    method: "adaptive" (Tsitouras 5(4), diffrax, PID step control), "dopri5", or a
    fixed-step method in FIXED_STEP_METHODS with `num_steps` uniform steps or an
    explicit time grid `ts` (from t0 to t1).
    error_norm: "batch_max" (each example's error within tolerance; the default) or
    "rms" (RMS over the whole batch, as scipy and diffrax do by default: cheaper,
    but single examples can exceed the tolerance).

    Returns (y1, nfe).
    """
    if method in FIXED_STEP_METHODS:
        if ts is None:
            if num_steps is None or num_steps < 1:
                raise ValueError(f"method={method!r} needs num_steps >= 1 or ts; got num_steps={num_steps}")
            ts = jnp.linspace(t0, t1, num_steps + 1)
        steps = ts.shape[0] - 1
        return _fixed_step(vector_field, y0, ts, method), steps * _EVALS_PER_STEP[method]
    if method not in ADAPTIVE_METHODS:
        raise ValueError(
            f"unknown ODE method {method!r}; expected one of {ADAPTIVE_METHODS + FIXED_STEP_METHODS}"
        )
    norms = {"batch_max": batch_max_rms_norm, "rms": rms_norm}
    if error_norm not in norms:
        raise ValueError(f"unknown error_norm {error_norm!r}; expected one of {sorted(norms)}")
    solver = diffrax.Dopri5() if method == "dopri5" else diffrax.Tsit5()
    term = diffrax.ODETerm(lambda t, y, args: vector_field(y, t))
    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=norms[error_norm])
    h0 = 0.01 * (t1 - t0)
    sol = diffrax.diffeqsolve(
        term, solver, t0=t0, t1=t1, dt0=h0, y0=y0,
        stepsize_controller=controller, max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    y1 = jax.tree_util.tree_map(lambda leaf: leaf[-1], sol.ys)
    # Both solvers are FSAL: one evaluation at t0, then six per attempted step.
    nfe = 1 + 6 * sol.stats["num_steps"]
    return y1, nfe


def _basis_probes(x: jax.Array) -> jax.Array:
    """The D unit vectors e_i, each broadcast over the batch: shape (D, *x.shape)."""
    dim = x[0].size
    eye = jnp.eye(dim, dtype=x.dtype).reshape((dim,) + x.shape[1:])
    return jnp.broadcast_to(eye[:, None], (dim,) + x.shape)


def hutchinson_probes(key, x: jax.Array, num_probes: int = 1, kind: str = "rademacher") -> jax.Array:
    """Probe vectors with E[v v^T] = I (Hutchinson 1989): shape (num_probes, *x.shape)."""
    shape = (num_probes,) + x.shape
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype=x.dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype=x.dtype)
    raise ValueError(f"unknown probe kind {kind!r}; expected 'rademacher' or 'gaussian'")


def value_and_divergence(fn: Callable, x: jax.Array, probes: jax.Array | None = None):
    """fn(x) and the per-example divergence (trace of the Jacobian) of a batched map.

    probes=None gives the exact trace from D Jacobian-vector products (small D).
    Otherwise Hutchinson's unbiased estimate mean_k v_k^T J v_k (Hutchinson 1989;
    FFJORD, Grathwohl et al. 2019, eq. 7) with the given probes (num_probes, *x.shape).
    Both share one linearisation of fn. Examples must not interact (the Jacobian
    is block-diagonal over the batch).
    """
    fx, jvp_fn = jax.linearize(fn, x)
    exact = probes is None
    v = _basis_probes(x) if exact else probes
    jv = jax.vmap(jvp_fn)(v)
    terms = jnp.sum((jv * v).reshape(v.shape[0], x.shape[0], -1), axis=2)
    return fx, (jnp.sum(terms, axis=0) if exact else jnp.mean(terms, axis=0))


def ode_log_likelihood(
    key,
    vector_field: Callable,
    x: jax.Array,
    t0: float,
    t1: float,
    base_log_prob: Callable,
    *,
    exact_divergence: bool = True,
    probe: str = "rademacher",
    num_probes: int = 1,
    **solver_kwargs,
):
    """log p_{t0}(x) for the density transported by dx/dt = vector_field(x, t).

    Integrates the state and the divergence together from t0 to t1, where the
    density is `base_log_prob`:
        log p_{t0}(x) = log p_{t1}(z) + int_{t0}^{t1} div f(x_t, t) dt
    (Chen et al. 2018, Thm. 1; Song et al. 2021, eq. 39). The divergence is exact
    or Hutchinson's estimate with probes drawn once and fixed over the whole solve.

    Returns (log_prob of shape (N,), z, nfe).
    """
    probes = None if exact_divergence else hutchinson_probes(key, x, num_probes, probe)

    def augmented(state, t):
        return value_and_divergence(lambda y: vector_field(y, t), state[0], probes)

    (z, delta), nfe = solve_ode(augmented, (x, jnp.zeros(x.shape[0], x.dtype)), t0, t1, **solver_kwargs)
    return base_log_prob(z) + delta, z, nfe
