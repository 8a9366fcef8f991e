"""Continuous normalizing flows trained by maximum likelihood (FFJORD,
Grathwohl et al. 2019; Chen et al. 2018).

Time convention (that of every module in `genjax.flows`): t = 0 is the standard
normal base and t = 1 the data. A network `net.apply(params, x, t)` (x of shape
(N, *data_shape), t of shape (N,)) is the vector field f; samples solve
dx/dt = f(x, t) from t = 0 to t = 1, and the log-density follows from the
instantaneous change of variables (Chen et al. 2018, Thm. 1; FFJORD eq. 4):

    log p_1(x) = log N(z; 0, I) - int_0^1 tr(df/dx)(x_t, t) dt,   z = x_0,

integrated backwards from x at t = 1. Unlike flow matching, the loss *is* this
negative log-likelihood, and its gradient flows through the ODE solver
(discretise-then-optimise: backpropagation through the solver's steps).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from genjax import integrate
from genjax.core import Model
from genjax.flows.bijectors import check_event_shape, standard_normal_log_prob
from genjax.flows.ode import vector_field


def make_cnf_model(
    net,
    *,
    data_shape,
    exact_divergence: bool = True,
    probe: str = "rademacher",
    num_probes: int = 1,
    train_method: str = "rk4",
    train_num_steps: int | None = 8,
    eval_method: str = "adaptive",
    eval_num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    kinetic_weight: float = 0.0,
    jacobian_weight: float = 0.0,
) -> Model:
    """An FFJORD continuous normalizing flow as a `genjax.core.Model`.

    exact_divergence: exact trace (D Jacobian-vector products per evaluation;
      small D) or Hutchinson's estimator (FFJORD eq. 7) with `num_probes`
      `probe` vectors ("rademacher" or "gaussian") drawn once per solve.
    train_method / train_num_steps: the solver of the training loss; a fixed-step
      method ("rk4", "heun", "midpoint", "euler") with a few steps keeps the
      compiled training step small and fast. "adaptive" also works (gradients
      through diffrax's steps).
    eval_method / eval_num_steps / rtol / atol: the solver of `sample` and `log_prob`.
    kinetic_weight / jacobian_weight: RNODE regularization (Finlay et al. 2020,
      eq. 7): the loss adds lambda_K int ||f||^2 dt + lambda_J int ||df/dx||_F^2 dt,
      integrated along the training solve. Needed when training through a few
      fixed steps: unregularized, the field grows stiff and the fixed-step
      likelihood diverges from the true one (training loss far below the entropy).

    loss: mean negative log-likelihood in nats plus the regularizers (metrics: nll,
      bits_per_dim, nfe, and kinetic / jacobian_frobenius when regularized).
    sample(params, key, num, **solver): samples of shape (num, *data_shape).
    log_prob(params, key, x, **overrides): log p_1(x) in nats per example, exact up
      to the solver's error when exact_divergence=True, otherwise an unbiased
      estimate; keywords override the evaluation settings (method, num_steps,
      rtol, atol, exact_divergence, probe, num_probes).
    """
    data_shape = tuple(int(d) for d in data_shape)
    num_dims = math.prod(data_shape)

    def check(x):
        check_event_shape(f"CNF batch (data_shape={data_shape})", x, data_shape)

    def field_of(params):
        return vector_field(lambda x, t: net.apply(params, x, t))

    def log_likelihood(params, key, x, **solver):
        logp, _, nfe = integrate.ode_log_likelihood(
            key, field_of(params), x, 1.0, 0.0, standard_normal_log_prob, **solver)
        return logp, nfe

    divergence = dict(exact_divergence=exact_divergence, probe=probe, num_probes=num_probes)
    train_solver = dict(divergence, method=train_method, num_steps=train_num_steps, rtol=rtol, atol=atol)
    eval_solver = dict(divergence, method=eval_method, num_steps=eval_num_steps, rtol=rtol, atol=atol)

    def init(key, x):
        check(x)
        return net.init(key, x, jnp.zeros((x.shape[0],), x.dtype))

    regularized = kinetic_weight > 0 or jacobian_weight > 0

    def loss(params, key, x):
        check(x)
        if not regularized:
            logp, nfe = log_likelihood(params, key, x, **train_solver)
            penalty, extra = 0.0, {}
        else:
            logp, _, nfe, kinetic, frob = integrate.ode_log_likelihood_and_regularizers(
                key, field_of(params), x, 1.0, 0.0, standard_normal_log_prob, **train_solver)
            extra = {"kinetic": jnp.mean(kinetic), "jacobian_frobenius": jnp.mean(frob)}
            penalty = kinetic_weight * extra["kinetic"] + jacobian_weight * extra["jacobian_frobenius"]
        nll = -jnp.mean(logp)
        metrics = {"nll": nll, "bits_per_dim": nll / (num_dims * math.log(2.0)), "nfe": jnp.asarray(nfe), **extra}
        return nll + penalty, metrics

    def sample(params, key, num, **overrides):
        solver = {k: eval_solver[k] for k in ("method", "num_steps", "rtol", "atol")}
        solver.update(overrides)
        z = jax.random.normal(key, (num,) + data_shape)
        x, _ = integrate.solve_ode(field_of(params), z, 0.0, 1.0, **solver)
        return x

    def log_prob(params, key, x, **overrides):
        check(x)
        return log_likelihood(params, key, x, **dict(eval_solver, **overrides))[0]

    return Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
