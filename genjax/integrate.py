"""The one ODE integration path of genjax.

Diffusion samplers and likelihoods, continuous normalizing flows and flow matching
all integrate through `solve_ode`, and all compute log-likelihoods through
`ode_log_likelihood` (instantaneous change of variables, Chen et al. 2018, Thm. 1).

Conventions: a vector field is `f(y, t) -> dy/dt` with `y` a pytree whose leaves
carry a leading batch axis and `t` a scalar. Integration may run backwards in time
(t1 < t0). Every solver returns `(y1, nfe)`, the number of evaluations of `f`;
`solve_ode_trajectory` returns `(ys, nfe)` with every state of a fixed-step solve.
"""
from typing import Callable

import chex
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


def _fixed_step(vector_field, y0, ts, method, save_trajectory=False):
    """y at ts[-1] from y0 at ts[0]; with save_trajectory, the states at every ts[1:]."""

    def rk_step(y, t_pair):
        t, t_next = t_pair
        h = t_next - t
        add = lambda a, b, c=1.0: jax.tree_util.tree_map(lambda u, v: u + c * v, a, b)
        k1 = vector_field(y, t)
        if method == "euler":
            y_next = add(y, k1, h)
        elif method == "midpoint":
            k2 = vector_field(add(y, k1, h / 2), t + h / 2)
            y_next = add(y, k2, h)
        elif method == "heun":
            k2 = vector_field(add(y, k1, h), t_next)
            y_next = add(y, jax.tree_util.tree_map(lambda a, b: (a + b) / 2, k1, k2), h)
        else:  # Classical fourth-order Runge-Kutta.
            k2 = vector_field(add(y, k1, h / 2), t + h / 2)
            k3 = vector_field(add(y, k2, h / 2), t + h / 2)
            k4 = vector_field(add(y, k3, h), t_next)
            incr = jax.tree_util.tree_map(lambda a, b, c, d: (a + 2 * b + 2 * c + d) / 6, k1, k2, k3, k4)
            y_next = add(y, incr, h)
        return y_next, (y_next if save_trajectory else None)

    y1, ys = jax.lax.scan(rk_step, y0, (ts[:-1], ts[1:]))
    return ys if save_trajectory else y1


def _fixed_step_grid(method, t0, t1, num_steps, ts):
    if method not in FIXED_STEP_METHODS:
        raise ValueError(f"unknown fixed-step method {method!r}; expected one of {FIXED_STEP_METHODS}")
    if ts is None:
        if num_steps is None or num_steps < 1:
            raise ValueError(f"method={method!r} needs num_steps >= 1 or ts; got num_steps={num_steps}")
        ts = jnp.linspace(t0, t1, num_steps + 1)
    return ts, (ts.shape[0] - 1) * _EVALS_PER_STEP[method]


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
        ts, nfe = _fixed_step_grid(method, t0, t1, num_steps, ts)
        return _fixed_step(vector_field, y0, ts, method), nfe
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


def solve_ode_trajectory(
    vector_field: Callable,
    y0,
    t0: float,
    t1: float,
    *,
    method: str = "euler",
    num_steps: int | None = None,
    ts: jax.Array | None = None,
):
    """`solve_ode` with a fixed-step method, keeping every intermediate state.

    The same steps as `solve_ode(..., method=method)` on the same grid (`num_steps`
    uniform steps or an explicit `ts`), so the last state is its result.

    Returns (ys, nfe): each leaf of ys has a leading axis of K + 1 states, entry k
    the state at the k-th grid time (entry 0 is y0).
    """
    ts, nfe = _fixed_step_grid(method, t0, t1, num_steps, ts)
    ys = _fixed_step(vector_field, y0, ts, method, save_trajectory=True)
    ys = jax.tree_util.tree_map(lambda first, rest: jnp.concatenate([first[None], rest], axis=0), y0, ys)
    return ys, nfe


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


def _probe_products(fn: Callable, x: jax.Array, probes: jax.Array | None):
    """fn(x), the probes v (basis vectors when probes is None) and J v for each."""
    fx, jvp_fn = jax.linearize(fn, x)
    # A field of another shape than its state would broadcast against the probes.
    chex.assert_equal_shape([fx, x], custom_message="vector field output vs state")
    v = _basis_probes(x) if probes is None else probes
    return fx, v, jax.vmap(jvp_fn)(v)


def _per_example_sum(a_K_x) -> jax.Array:
    """Sum over each example's event dims: (K, N, ...) -> (K, N)."""
    return jnp.sum(a_K_x.reshape(a_K_x.shape[0], a_K_x.shape[1], -1), axis=2)


def value_and_divergence(fn: Callable, x: jax.Array, probes: jax.Array | None = None):
    """fn(x) and the per-example divergence (trace of the Jacobian) of a batched map.

    probes=None gives the exact trace from D Jacobian-vector products (small D).
    Otherwise Hutchinson's unbiased estimate mean_k v_k^T J v_k (Hutchinson 1989;
    FFJORD, Grathwohl et al. 2019, eq. 7) with the given probes (num_probes, *x.shape).
    Both share one linearisation of fn. Examples must not interact (the Jacobian
    is block-diagonal over the batch).
    """
    fx, v, jv = _probe_products(fn, x, probes)
    terms = _per_example_sum(jv * v)
    return fx, (jnp.sum(terms, axis=0) if probes is None else jnp.mean(terms, axis=0))


def value_divergence_and_frobenius(fn: Callable, x: jax.Array, probes: jax.Array | None = None):
    """fn(x), its divergence and the squared Frobenius norm ||J||_F^2 per example.

    ||J||_F^2 = sum_i ||J e_i||^2 exactly (probes=None), or the unbiased estimate
    mean_k ||J v_k||^2 since E[v v^T] = I (Finlay et al. 2020, "How to train your
    neural ODE", eq. 6). The same products give the divergence as in
    `value_and_divergence`.
    """
    fx, v, jv = _probe_products(fn, x, probes)
    trace_terms, frob_terms = _per_example_sum(jv * v), _per_example_sum(jv * jv)
    reduce = (lambda a: jnp.sum(a, axis=0)) if probes is None else (lambda a: jnp.mean(a, axis=0))
    return fx, reduce(trace_terms), reduce(frob_terms)


def _per_example_base(base_log_prob: Callable, z: jax.Array) -> jax.Array:
    """base_log_prob(z), asserted to be one value per example: an (N, 1) result
    would broadcast against the (N,) divergence integral into an (N, N) array."""
    log_p_N = base_log_prob(z)
    chex.assert_shape(log_p_N, z.shape[:1], custom_message="base_log_prob(z)")
    return log_p_N


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
    return _per_example_base(base_log_prob, z) + delta, z, nfe


def ode_log_likelihood_and_regularizers(
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
    """`ode_log_likelihood` plus the two RNODE regularizers along the same solve
    (Finlay et al. 2020, eqs. 5-6), each integrated over |t1 - t0| per example:

        kinetic energy  K = int ||f(x_t, t)||^2 dt,
        Jacobian norm   J = int ||df/dx (x_t, t)||_F^2 dt   (exact or Hutchinson).

    Penalising them keeps trajectories straight and the field smooth, so a
    fixed-step solver stays accurate during maximum-likelihood training (without
    them a few RK4 steps let the model exploit the discretization error: the
    integrated trace stops being the log-determinant of the map actually used).

    Returns (log_prob (N,), z, nfe, kinetic (N,), jacobian_frobenius (N,)).
    """
    probes = None if exact_divergence else hutchinson_probes(key, x, num_probes, probe)
    direction = 1.0 if t1 >= t0 else -1.0  # the solve accumulates signed dt

    def augmented(state, t):
        fx, div, frob = value_divergence_and_frobenius(lambda y: vector_field(y, t), state[0], probes)
        kinetic = jnp.sum(fx.reshape(fx.shape[0], -1) ** 2, axis=1)
        return fx, div, direction * kinetic, direction * frob

    zeros = jnp.zeros(x.shape[0], x.dtype)
    (z, delta, kinetic, frob), nfe = solve_ode(augmented, (x, zeros, zeros, zeros), t0, t1, **solver_kwargs)
    return _per_example_base(base_log_prob, z) + delta, z, nfe, kinetic, frob
