"""Distances between sample sets, for judging samplers against exact samples."""
import jax
import jax.numpy as jnp


def sliced_wasserstein(key, x_ND, y_MD, num_projections: int = 512, p: int = 2) -> jax.Array:
    """Sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015):
    (E_theta W_p^p(theta^T x, theta^T y))^(1/p) over random unit directions theta.

    The 1-D distance compares sorted projections; sets of different sizes are
    compared at the quantiles of the smaller one.
    """
    x_ND = jnp.reshape(x_ND, (x_ND.shape[0], -1))
    y_MD = jnp.reshape(y_MD, (y_MD.shape[0], -1))
    if x_ND.shape[1] != y_MD.shape[1]:
        raise ValueError(f"sample sets have dimensions {x_ND.shape[1]} and {y_MD.shape[1]}; expected equal")
    theta_PD = jax.random.normal(key, (num_projections, x_ND.shape[1]))
    theta_PD = theta_PD / jnp.linalg.norm(theta_PD, axis=1, keepdims=True)
    px = jnp.sort(x_ND @ theta_PD.T, axis=0)
    py = jnp.sort(y_MD @ theta_PD.T, axis=0)
    n = min(px.shape[0], py.shape[0])
    levels = (jnp.arange(n) + 0.5) / n
    qx = jnp.quantile(px, levels, axis=0) if px.shape[0] != n else px
    qy = jnp.quantile(py, levels, axis=0) if py.shape[0] != n else py
    return jnp.mean(jnp.abs(qx - qy) ** p) ** (1.0 / p)


def mmd(x_ND, y_MD, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> jax.Array:
    """Unbiased squared maximum mean discrepancy with a sum of RBF kernels
    (Gretton et al. 2012, eq. 3): E k(x,x') + E k(y,y') - 2 E k(x,y)."""
    x_ND = jnp.reshape(x_ND, (x_ND.shape[0], -1))
    y_MD = jnp.reshape(y_MD, (y_MD.shape[0], -1))

    def kernel(a, b):
        sq = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
        return sum(jnp.exp(-sq / (2 * h * h)) for h in bandwidths)

    n, m = x_ND.shape[0], y_MD.shape[0]
    kxx = kernel(x_ND, x_ND)
    kyy = kernel(y_MD, y_MD)
    kxy = kernel(x_ND, y_MD)
    off = lambda k, size: (jnp.sum(k) - jnp.trace(k)) / (size * (size - 1))
    return off(kxx, n) + off(kyy, m) - 2 * jnp.mean(kxy)


def total_variation(p_K, q_K) -> jax.Array:
    """Total variation distance between two categorical distributions: 0.5 * sum |p - q|."""
    return 0.5 * jnp.sum(jnp.abs(jnp.asarray(p_K) - jnp.asarray(q_K)))
