"""Helpers shared by the flow test files: dense-Jacobian log-dets and parameter
perturbation (so checks never run at a layer's identity initialisation)."""
import jax
import jax.numpy as jnp
import numpy as np


def jacobian_log_dets(forward, x):
    """Per-example log|det d forward / d x| via slogdet of each example's dense Jacobian."""
    shape = x.shape[1:]

    def flat_forward(z):
        return forward(z.reshape(1, *shape))[0].reshape(-1)

    jac = jax.jit(jax.vmap(jax.jacfwd(flat_forward)))(x.reshape(x.shape[0], -1))
    return jnp.linalg.slogdet(jac)[1]


def perturb(params, key, scale):
    """Adds noise N(0, scale^2 / fan_in) to every parameter (fan_in = 1 for vectors).

    Moves layers off their initial point (e.g. the zero last layer of a coupling
    conditioner) by a comparable amount whatever the layer width.
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        p + scale / np.sqrt(np.prod(p.shape[:-1])) * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, noisy)
