"""Flow matching and rectified flow (Lipman et al. 2023; Liu et al. 2023).

Time convention of this module: t = 0 is the standard normal noise x0 and t = 1
is the data x1. A learned velocity field `velocity_fn(x, t) -> v`, with x of shape
(N, *event) and t of shape (N,), carries noise to data along dx/dt = v(x, t).

The pieces combine freely (as in Meta's flow_matching library):

* a *scheduler* gives alpha(t), sigma(t) and their time derivatives
  (`CondOTScheduler`, `CosineScheduler`, `VPScheduler`);
* an *affine probability path* `AffinePath(scheduler)` defines the conditional
  path x_t = alpha_t x1 + sigma_t x0 and its velocity
  u_t = alpha'_t x1 + sigma'_t x0 (Lipman et al. 2023, eq. 11 and Thm. 3);
* a *coupling* decides which noise pairs with which data point: independent, or
  mini-batch optimal transport (`minibatch_ot_coupling`, Tong et al. 2023);
* the *loss* regresses v(x_t, t) on u_t (conditional flow matching, Lipman et
  al. 2023, eq. 9; rectified flow, Liu et al. 2023, eq. 1);
* sampling and likelihoods integrate through `genjax.integrate`, the one ODE
  path of the library.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from genjax import guidance as guidance_lib
from genjax import integrate
from genjax.core import Model
from genjax.flows.bijectors import check_event_shape

# ----------------------------------------------------------------------------- schedulers


@dataclasses.dataclass(frozen=True)
class CondOTScheduler:
    """Conditional optimal-transport schedule (Lipman et al. 2023, eq. 20):
    alpha_t = t, sigma_t = 1 - (1 - sigma_min) t.

    sigma_min = 0 is the straight line of rectified flow (Liu et al. 2023).
    """

    sigma_min: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"CondOTScheduler: sigma_min must lie in [0, 1); got {self.sigma_min}")

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return jnp.ones_like(t)

    def d_sigma(self, t):
        return jnp.full_like(t, -(1.0 - self.sigma_min))


@dataclasses.dataclass(frozen=True)
class CosineScheduler:
    """Variance-preserving cosine schedule: alpha_t = sin(pi t / 2),
    sigma_t = cos(pi t / 2), so alpha_t^2 + sigma_t^2 = 1 (Nichol & Dhariwal 2021
    in this module's time direction; the "trigonometric" path of Albergo &
    Vanden-Eijnden 2023)."""

    def alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * t)

    def sigma(self, t):
        return jnp.cos(0.5 * jnp.pi * t)

    def d_alpha(self, t):
        return 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t)

    def d_sigma(self, t):
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)


@dataclasses.dataclass(frozen=True)
class VPScheduler:
    """The VP-SDE's marginal coefficients as a flow-matching schedule.

    With diffusion time s = 1 - (1 - eps) t (s runs from 1 at the noise end to
    eps at the data end), alpha = exp(-s^2 (beta_max - beta_min) / 4 - s beta_min / 2)
    and sigma = sqrt(1 - alpha^2) (Song et al. 2021, eq. 33; Lipman et al. 2023,
    eq. 19). sigma'(t) ~ 1/sigma(t) blows up at s = 0, hence eps > 0: at t = 1 the
    path stops at alpha ~ 1, sigma ~ sqrt(beta_min eps), and at t = 0 alpha is
    small but not 0 (about 7e-3 for the defaults).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3

    def __post_init__(self):
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ValueError(
                f"VPScheduler: need 0 < beta_min <= beta_max; got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"VPScheduler: eps must lie in (0, 1); got {self.eps}")

    def _s(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def _log_alpha(self, s):
        return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def alpha(self, t):
        return jnp.exp(self._log_alpha(self._s(t)))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(self._s(t))))

    def d_alpha(self, t):
        s = self._s(t)
        # d log alpha / ds = -beta(s) / 2, and ds/dt = -(1 - eps).
        beta = self.beta_min + s * (self.beta_max - self.beta_min)
        return self.alpha(t) * 0.5 * beta * (1.0 - self.eps)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)


# ----------------------------------------------------------------------------- paths


def _per_example(coeff_N, x):
    """Broadcasts a per-example coefficient (N,) against x of shape (N, ...)."""
    return jnp.reshape(coeff_N, coeff_N.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class AffinePath:
    """Affine conditional probability path (Lipman et al. 2023, sec. 4):

        x_t = alpha_t x1 + sigma_t x0,    u_t = alpha'_t x1 + sigma'_t x0
    (eq. 11 and Thm. 3),

    with x0 ~ N(0, I) the noise, x1 the data and t of shape (N,). `scheduler`
    is any object with alpha, sigma, d_alpha, d_sigma of t.
    """

    scheduler: Any

    def sample_xt(self, x0, x1, t):
        s = self.scheduler
        return _per_example(s.alpha(t), x1) * x1 + _per_example(s.sigma(t), x0) * x0

    def target_velocity(self, x0, x1, t):
        s = self.scheduler
        return _per_example(s.d_alpha(t), x1) * x1 + _per_example(s.d_sigma(t), x0) * x0


def cond_ot_path(sigma_min: float = 0.0) -> AffinePath:
    """The conditional-OT / rectified-flow straight line (Lipman et al. 2023, eqs. 20-23)."""
    return AffinePath(CondOTScheduler(sigma_min))


def vp_path(scheduler=None) -> AffinePath:
    """A variance-preserving path; the cosine schedule unless `scheduler` is given."""
    return AffinePath(CosineScheduler() if scheduler is None else scheduler)


# ----------------------------------------------------------------------------- couplings


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


# ----------------------------------------------------------------------------- losses


def _uniform_time(key, n, dtype):
    return jax.random.uniform(key, (n,), dtype)


def paired_flow_matching_loss(key, path, velocity_fn: Callable, x0, x1):
    """Flow matching on given pairs (x0, x1): per-example ||v(x_t, t) - u_t||^2,
    summed over the event dimensions, t ~ U[0, 1].

    With independent pairs this is conditional flow matching (Lipman et al. 2023,
    eq. 9); with the pairs of `reflow_pairs` and the straight path it is the
    rectified-flow objective of the next reflow round (Liu et al. 2023, eq. 1).
    Returns the loss of shape (N,).
    """
    if x0.shape != x1.shape:
        raise ValueError(
            f"paired_flow_matching_loss: noise x0 has shape {x0.shape} but data x1 has shape {x1.shape}"
        )
    t = _uniform_time(key, x1.shape[0], x1.dtype)
    x_t = path.sample_xt(x0, x1, t)
    residual = velocity_fn(x_t, t) - path.target_velocity(x0, x1, t)
    return jnp.sum(residual.reshape(x1.shape[0], -1) ** 2, axis=1)


def flow_matching_loss(key, path, velocity_fn: Callable, x1, coupling: Callable | None = None):
    """Conditional flow matching (Lipman et al. 2023, eq. 9) with noise x0 ~ N(0, I)
    drawn here and paired with the data x1 by `coupling(key, x0, x1) -> (x0, x1)`
    (None: independent pairs; `minibatch_ot_coupling`: OT-CFM, Tong et al. 2023).

    Its gradient equals that of the marginal flow matching loss (Lipman et al.
    2023, Thm. 2). Returns the per-example loss of shape (N,).
    """
    noise_key, coupling_key, time_key = jax.random.split(key, 3)
    x0 = jax.random.normal(noise_key, x1.shape, x1.dtype)
    if coupling is not None:
        x0, x1 = coupling(coupling_key, x0, x1)
    return paired_flow_matching_loss(time_key, path, velocity_fn, x0, x1)


# ----------------------------------------------------------------------------- ODE


def vector_field(velocity_fn: Callable) -> Callable:
    """Adapts velocity_fn(x, t_N) to the (y, scalar t) convention of `genjax.integrate`."""

    def f(x, t):
        return velocity_fn(x, jnp.full((x.shape[0],), t, dtype=x.dtype))

    return f


def standard_normal_log_prob(z) -> jax.Array:
    """log N(z; 0, I) per example, summed over the event dimensions."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2.0 * math.pi)


def _initial_noise(key, shape, x_init):
    shape = tuple(shape)
    if x_init is None:
        return jax.random.normal(key, shape)
    if tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}; expected {shape}")
    return x_init


def ode_sample(
    key,
    velocity_fn: Callable,
    shape,
    method: str = "adaptive",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    x_init=None,
):
    """Samples by solving dx/dt = v(x, t) from noise at t = 0 to data at t = 1.

    method: "adaptive" (Tsit5) or a fixed-step method ("euler", "midpoint",
    "heun", "rk4") with `num_steps`. x_init replaces the noise drawn from `key`.
    Returns (samples of `shape`, number of velocity evaluations).
    """
    x0 = _initial_noise(key, shape, x_init)
    return integrate.solve_ode(
        vector_field(velocity_fn), x0, 0.0, 1.0,
        method=method, num_steps=num_steps, rtol=rtol, atol=atol,
    )


def log_likelihood(
    key,
    velocity_fn: Callable,
    x,
    exact_divergence: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "adaptive",
    num_steps: int | None = None,
    probe: str = "rademacher",
    num_probes: int = 1,
):
    """log p_1(x) in nats per example of the flow with a standard normal at t = 0:

        log p_1(x) = log N(z; 0, I) - int_0^1 div v(x_t, t) dt,   z = x_0,

    integrated from t = 1 back to t = 0 (Chen et al. 2018, Thm. 1; Lipman et al.
    2023, sec. 6). The divergence is exact (D Jacobian-vector products) or
    Hutchinson's unbiased estimate with `num_probes` probes (Grathwohl et al. 2019).
    Returns (log_prob of shape (N,), nfe).
    """
    logp, _, nfe = integrate.ode_log_likelihood(
        key, vector_field(velocity_fn), x, 1.0, 0.0, standard_normal_log_prob,
        exact_divergence=exact_divergence, probe=probe, num_probes=num_probes,
        method=method, num_steps=num_steps, rtol=rtol, atol=atol,
    )
    return logp, nfe


# ----------------------------------------------------------------------------- rectified flow


def straightness(key, velocity_fn: Callable, x_init, num_steps: int | None = 100, method: str = "euler"):
    """Straightness S of the flow from x_init (Liu et al. 2023):

        S = E int_0^1 ||(X_1 - X_0) - v(X_t, t)||^2 dt,

    zero exactly when every trajectory is a straight line at constant speed.
    Since int_0^1 v(X_t, t) dt = X_1 - X_0, S = E[int ||v||^2 dt - ||X_1 - X_0||^2];
    the integral of ||v||^2 rides along the ODE as an extra state, so the whole
    computation is one `genjax.integrate.solve_ode` call (for Euler it is exactly
    the left-point sum over the Euler trajectory). `key` is unused: the ODE is
    deterministic; it is kept for the usual (key, ...) signature.
    Returns (S averaged over the examples, nfe).
    """
    del key

    def augmented(state, t):
        x, _ = state
        v = velocity_fn(x, jnp.full((x.shape[0],), t, dtype=x.dtype))
        return v, jnp.sum(v.reshape(x.shape[0], -1) ** 2, axis=1)

    state0 = (x_init, jnp.zeros((x_init.shape[0],), x_init.dtype))
    (x1, energy), nfe = integrate.solve_ode(augmented, state0, 0.0, 1.0, method=method, num_steps=num_steps)
    displacement = jnp.sum((x1 - x_init).reshape(x_init.shape[0], -1) ** 2, axis=1)
    return jnp.mean(energy - displacement), nfe


def reflow_pairs(key, velocity_fn: Callable, num: int, shape, **solver_kwargs):
    """Noise / sample pairs (x0, x1 = ODE(x0)) for the next rectified-flow round
    ("reflow", Liu et al. 2023). `shape` is the event shape.
    Solver keywords as in `ode_sample`. Returns (x0, x1), each (num, *shape).
    """
    x0 = jax.random.normal(key, (num,) + tuple(shape))
    x1, _ = ode_sample(key, velocity_fn, x0.shape, x_init=x0, **solver_kwargs)
    return x0, x1


# ----------------------------------------------------------------------------- model


def make_flow_matching_model(
    net,
    *,
    data_shape,
    path: AffinePath | None = None,
    ot_coupling: bool = False,
    paired: bool = False,
    num_classes: int | None = None,
    label_dropout: float = 0.1,
) -> Model:
    """A flow matching model whose network is the velocity field.

    The network is called as `net.apply(params, x, t, labels)` (labels None for an
    unconditional model), and in the loss with `train=True, rngs={"dropout": key}`,
    the signature of `genjax.nn` nets (TimeMLP, UNet) shared with the diffusion model.

    path: the probability path (default: conditional OT, `cond_ot_path()`).
    ot_coupling: pair noise and data by mini-batch OT (Tong et al. 2023).
    paired: the batch is a pair (x0, x1) of fixed noise and data, e.g. from
      `reflow_pairs` (rectified flow's reflow; `ot_coupling` is then ignored).
    num_classes: a class-conditional model v(x, t, c) (Zheng et al. 2023, "Guided
      flows"): batches are dicts {"x", "label"}; each label is replaced by the null
      label `num_classes` with probability `label_dropout` in the loss
      (`genjax.guidance.drop_labels`, Ho & Salimans 2021), so the same net also
      learns the unconditional field. The velocity of the affine Gaussian path is
      affine in the score at fixed (x, t), so classifier-free guidance mixes
      velocities (`genjax.guidance.guided`): v_w = (1 + w) v(x, t, c) - w v(x, t, null).

    loss: mean over the batch of the per-example loss (see `flow_matching_loss`).
    sample(params, key, num, method="adaptive", num_steps=None, labels=None,
      guidance=0.0, **kw): samples only (`ode_sample` also returns the NFE).
      On a conditional model labels default to 0, 1, ..., K-1, 0, ... and guidance
      is the weight w (0 = plain conditional).
    log_prob(params, key, x, labels=None, **kw): the exact log-likelihood of the ODE
      model in nats (exact divergence by default; keywords of `log_likelihood`), of
      the guided field with given labels (a density only at w = 0), else of the
      unconditional (null-label) field. x is an array (a dict batch is accepted).
    """
    data_shape = tuple(int(d) for d in data_shape)
    path = cond_ot_path() if path is None else path
    coupling = minibatch_ot_coupling if ot_coupling else None
    conditional = num_classes is not None
    if conditional and paired:
        raise ValueError("make_flow_matching_model: paired=True (reflow) is unconditional; "
                         f"got num_classes={num_classes!r}")
    guidance_lib.check_guidance(0.0, num_classes)  # validates num_classes
    null_label = num_classes

    def check(x, what="flow matching batch"):
        check_event_shape(f"{what} (data_shape={data_shape})", x, data_shape)

    pred_of = functools.partial(guidance_lib.network_prediction, net)

    def velocity_of(params, labels=None, guidance=0.0):
        """v(x, t): plain, or guided (Ho & Salimans 2021, eq. 6) on a conditional model."""
        guidance_lib.check_guidance(guidance, num_classes)
        pred = pred_of(params)
        if not conditional:
            return lambda x, t: pred(x, t, None)
        if labels is None:
            raise ValueError("a class-conditional velocity needs labels (the null label "
                             f"{null_label} gives the unconditional field)")
        return guidance_lib.guided(pred, labels, null_label, guidance)

    def data_of(batch):
        if paired:
            x0, x1 = batch
            check(x0, "flow matching noise x0")
            check(x1, "flow matching data x1")
            return x1, None
        x, labels = guidance_lib.split_batch(batch, conditional)
        check(x)
        return x, labels

    def init(key, batch):
        x, labels = data_of(batch)
        return net.init(key, x, jnp.zeros((x.shape[0],), x.dtype), labels)

    def loss(params, key, batch):
        x1, labels = data_of(batch)
        loss_key, drop_key, net_key = jax.random.split(key, 3)
        if conditional:
            labels = guidance_lib.drop_labels(drop_key, labels, null_label, label_dropout)
        pred = pred_of(params, net_key)
        v = lambda x, t: pred(x, t, labels)
        if paired:
            per_example = paired_flow_matching_loss(loss_key, path, v, batch[0], x1)
        else:
            per_example = flow_matching_loss(loss_key, path, v, x1, coupling)
        value = jnp.mean(per_example)
        return value, {"fm_loss": value}

    def sample(params, key, num, method="adaptive", num_steps=None, labels=None, guidance=0.0,
               **kwargs):
        if conditional and labels is None:
            labels = guidance_lib.cycled_labels(num, num_classes)
        x, _ = ode_sample(key, velocity_of(params, labels, guidance), (num,) + data_shape,
                          method=method, num_steps=num_steps, **kwargs)
        return x

    def log_prob(params, key, x, labels=None, guidance=0.0, **kwargs):
        if isinstance(x, dict):
            x = x["x"]
        check(x)
        if conditional and labels is None:
            labels = jnp.full((x.shape[0],), null_label, jnp.int32)
        logp, _ = log_likelihood(key, velocity_of(params, labels, guidance), x, **kwargs)
        return logp

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
