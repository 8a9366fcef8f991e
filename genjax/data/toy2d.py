"""Toy densities with exact samplers and, where one exists, an exact log-density.

Two kinds of object live here:

* `GaussianMixture`, a frozen pytree for a mixture of full-covariance Gaussians in
  any dimension D. Its log-density, score and the law of its diffused version
  x_t = alpha * x_0 + sigma * eps are all closed form, which makes it the oracle
  for diffusion, score-matching and flow tests: `exact_score_fn(sde, mixture)` and
  `exact_log_prob_fn(sde, mixture, t)` give the exact score and marginal density
  under any SDE's Gaussian perturbation kernel.
* `ToyDensity(name, sample, log_prob, entropy)` bundles for the usual 2-D
  benchmarks (Grathwohl et al. 2019, "FFJORD", appendix toy data):
  `eight_gaussians`, `checkerboard`, `rings` (exact), and `pinwheel`,
  `two_moons`, `swiss_roll` (samplers only).

Every sampler is a deterministic function of its PRNG key and of a static Python
int `num`. Samplers, log-densities and scores are wrapped in `jax.jit` (with `num`
static) so eager calls compile once; they nest inside further `jit`, `vmap` and
`grad` as usual. Log-densities are in nats. Computation is float32; entropies
are computed once in float64 NumPy when a density is constructed (concrete
constructor arguments only).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from genjax.core import check_int

_LOG_2PI = math.log(2.0 * math.pi)


def _check_num(num) -> int:
    """Sample counts fix array shapes, so they must be concrete non-negative ints."""
    return check_int("num", num, 0)


def _check_positive(name: str, value) -> float:
    v = float(value)
    if not (v > 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_noise(noise) -> float:
    if float(noise) < 0 or not math.isfinite(float(noise)):
        raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    return float(noise)


def _check_weights(weights, size: int, name: str = "weights_K") -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{name} must be finite, >= 0 and not all zero, got {w.tolist()}")
    return w / w.sum()


# --------------------------------------------------------------------------------------
# Gaussian mixture
# --------------------------------------------------------------------------------------


@flax.struct.dataclass
class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) on R^D.

    Fields (all arrays, so a mixture can be traced, vmapped or differentiated):
      means_KD:  component means.
      covs_KDD:  component covariances: positive definite for `sample`, `log_prob`
                 and `score`; positive semi-definite (e.g. zero, for point masses)
                 suffices for `diffused_*` with sigma > 0.
      weights_K: non-negative mixture weights; normalised on use, so they need not
                 sum to one.

    Build from concrete arrays with `GaussianMixture.create` or
    `GaussianMixture.isotropic`, which check shapes, symmetry and semi-definiteness;
    the raw constructor checks nothing (pytree unflattening calls it with tracers).
    """

    means_KD: jax.Array
    covs_KDD: jax.Array
    weights_K: jax.Array

    # ---- construction -------------------------------------------------------------

    @classmethod
    def create(cls, means_KD, covs_KDD, weights_K=None) -> "GaussianMixture":
        """Checked constructor from concrete arrays; `weights_K=None` means equal weights."""
        means = np.asarray(means_KD, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means_KD must have shape (K, D) with K, D >= 1, got {means.shape}")
        k, d = means.shape
        covs = np.asarray(covs_KDD, dtype=np.float64)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs_KDD must have shape ({k}, {d}, {d}) to match means_KD, got {covs.shape}")
        if not np.allclose(covs, np.swapaxes(covs, 1, 2), rtol=1e-5, atol=1e-6 * max(1.0, np.abs(covs).max())):
            raise ValueError("covs_KDD must be symmetric")
        min_eig_K = np.linalg.eigvalsh(covs).min(axis=-1)
        if np.any(min_eig_K < -1e-6 * max(1.0, np.abs(covs).max())):
            raise ValueError(f"covs_KDD must be positive semi-definite, got smallest eigenvalues {min_eig_K.tolist()}")
        weights = np.ones(k) / k if weights_K is None else _check_weights(weights_K, k)
        return cls(
            means_KD=jnp.asarray(means, jnp.float32),
            covs_KDD=jnp.asarray(covs, jnp.float32),
            weights_K=jnp.asarray(weights, jnp.float32),
        )

    @classmethod
    def isotropic(cls, means_KD, std, weights_K=None) -> "GaussianMixture":
        """Components N(mu_k, std_k^2 I); `std` is a scalar or one value per component."""
        means = np.asarray(means_KD, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means_KD must have shape (K, D), got {means.shape}")
        k, d = means.shape
        std_arr = np.asarray(std, dtype=np.float64)
        if std_arr.ndim == 0:
            std_K = np.full(k, float(std_arr))
        elif std_arr.shape == (k,):
            std_K = std_arr
        else:
            raise ValueError(f"std must be a scalar or have shape ({k},), got shape {std_arr.shape}")
        if not np.all(np.isfinite(std_K)) or np.any(std_K <= 0):
            raise ValueError(f"std must be finite and > 0, got {np.asarray(std).tolist()}")
        covs = (std_K**2)[:, None, None] * np.eye(d)[None]
        return cls.create(means, covs, weights_K)

    # ---- basic properties ---------------------------------------------------------

    @property
    def num_components(self) -> int:
        return self.means_KD.shape[0]

    @property
    def dim(self) -> int:
        return self.means_KD.shape[1]

    def log_weights(self) -> jax.Array:
        """Normalised log mixture weights, shape (K,); zero weights give -inf."""
        w_K = jnp.asarray(self.weights_K)
        return jnp.log(w_K) - jnp.log(jnp.sum(w_K))

    def mean(self) -> jax.Array:
        """E[x] = sum_k w_k mu_k, shape (D,)."""
        w_K = jnp.exp(self.log_weights())
        return w_K @ self.means_KD

    def covariance(self) -> jax.Array:
        """Cov[x] = sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T), shape (D, D)."""
        w_K = jnp.exp(self.log_weights())
        c_KD = self.means_KD - self.mean()
        return jnp.einsum("k,kde->de", w_K, self.covs_KDD) + jnp.einsum("k,kd,ke->de", w_K, c_KD, c_KD)

    # ---- sampling -----------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("num",))
    def sample_with_labels(self, key: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
        """Ancestral sampling: k ~ Cat(w), x = mu_k + L_k eps with L_k L_k^T = Sigma_k.

        Returns (x_ND, k_N). Every component is applied to every eps and the right one
        selected, which costs K x the work but avoids gathering N (D, D) factors.
        """
        n = _check_num(num)
        key_k, key_eps = jax.random.split(key)
        k_N = jax.random.categorical(key_k, self.log_weights(), shape=(n,))
        eps_ND = jax.random.normal(key_eps, (n, self.dim), dtype=self.means_KD.dtype)
        chol_KDD = jnp.linalg.cholesky(self.covs_KDD)
        x_NKD = jnp.einsum("kde,ne->nkd", chol_KDD, eps_ND) + self.means_KD[None]
        x_ND = jnp.take_along_axis(x_NKD, k_N[:, None, None], axis=1)[:, 0]
        return x_ND, k_N

    @functools.partial(jax.jit, static_argnames=("num",))
    def sample(self, key: jax.Array, num: int) -> jax.Array:
        """`num` i.i.d. draws, shape (num, D)."""
        return self.sample_with_labels(key, num)[0]

    # ---- density and score (Cholesky of the fixed covariances) --------------------

    def _components(self, x_ND: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-component log N(x; mu_k, Sigma_k) (N, K), plus the Cholesky factors and
        whitened residuals z = L_k^{-1}(x - mu_k) laid out (K, D, N)."""
        x_ND = jnp.asarray(x_ND)
        if x_ND.ndim != 2 or x_ND.shape[1] != self.dim:
            raise ValueError(f"x_ND must have shape (N, {self.dim}), got {x_ND.shape}")
        chol_KDD = jnp.linalg.cholesky(self.covs_KDD)
        diff_KDN = jnp.swapaxes(x_ND[None] - self.means_KD[:, None], 1, 2)
        z_KDN = solve_triangular(chol_KDD, diff_KDN, lower=True)
        half_logdet_K = jnp.sum(jnp.log(jnp.diagonal(chol_KDD, axis1=1, axis2=2)), axis=-1)
        maha_KN = jnp.sum(z_KDN**2, axis=1)
        logn_NK = (-0.5 * (self.dim * _LOG_2PI + maha_KN) - half_logdet_K[:, None]).T
        return logn_NK, chol_KDD, z_KDN

    @jax.jit
    def log_prob(self, x_ND: jax.Array) -> jax.Array:
        """log p(x) = logsumexp_k [log w_k + log N(x; mu_k, Sigma_k)], shape (N,)."""
        logn_NK, _, _ = self._components(x_ND)
        return logsumexp(logn_NK + self.log_weights(), axis=-1)

    @jax.jit
    def responsibilities(self, x_ND: jax.Array) -> jax.Array:
        """Posterior component probabilities p(k | x), shape (N, K)."""
        logn_NK, _, _ = self._components(x_ND)
        return jax.nn.softmax(logn_NK + self.log_weights(), axis=-1)

    @jax.jit
    def score(self, x_ND: jax.Array) -> jax.Array:
        """grad_x log p(x) = sum_k p(k|x) (-Sigma_k^{-1}(x - mu_k)), shape (N, D).

        Sigma_k^{-1}(x - mu_k) = L_k^{-T} z_k with z_k the whitened residual; the
        responsibilities are a softmax of log-densities, so no density underflows.
        """
        logn_NK, chol_KDD, z_KDN = self._components(x_ND)
        resp_NK = jax.nn.softmax(logn_NK + self.log_weights(), axis=-1)
        prec_diff_KDN = solve_triangular(chol_KDD, z_KDN, lower=True, trans="T")
        return -jnp.einsum("nk,kdn->nd", resp_NK, prec_diff_KDN)

    # ---- diffusion ----------------------------------------------------------------

    def diffused(self, alpha, sigma) -> "GaussianMixture":
        """Law of x_t = alpha x_0 + sigma eps, x_0 ~ self, eps ~ N(0, I).

        A Gaussian perturbation kernel q(x_t | x_0) = N(alpha x_0, sigma^2 I)
        (Kingma et al. 2021, VDM eq. 1; Song et al. 2021, eq. 29 for VP/VE) maps each
        component to N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I). `alpha` and `sigma`
        may be traced scalars.
        """
        alpha = jnp.asarray(alpha, self.means_KD.dtype)
        sigma = jnp.asarray(sigma, self.means_KD.dtype)
        eye_DD = jnp.eye(self.dim, dtype=self.means_KD.dtype)
        return GaussianMixture(
            means_KD=alpha * self.means_KD,
            covs_KDD=alpha**2 * self.covs_KDD + sigma**2 * eye_DD,
            weights_K=self.weights_K,
        )

    def _diffused_components(self, x_ND, alpha_N, sigma_N):
        """Per-example-time version of `_components`, in each Sigma_k's eigenbasis.

        With Sigma_k = U_k diag(lam_k) U_k^T, alpha^2 Sigma_k + sigma^2 I =
        U_k diag(alpha^2 lam_k + sigma^2) U_k^T, so every example's covariance is
        diagonal in a basis shared across time: one eigh per component, then
        O(N K D^2) work and O(N K D) memory, never N copies of (D, D) matrices.
        Derivatives in x, alpha, sigma and the means are exact; derivatives in
        covs_KDD pass through eigh and are undefined when Sigma_k has repeated
        eigenvalues (isotropic components), so fit covariances with `diffused`.
        """
        x_ND = jnp.asarray(x_ND)
        if x_ND.ndim != 2 or x_ND.shape[1] != self.dim:
            raise ValueError(f"x_ND must have shape (N, {self.dim}), got {x_ND.shape}")
        n = x_ND.shape[0]
        alpha_N = jnp.broadcast_to(jnp.asarray(alpha_N, x_ND.dtype), (n,))
        sigma_N = jnp.broadcast_to(jnp.asarray(sigma_N, x_ND.dtype), (n,))
        lam_KD, u_KDD = jnp.linalg.eigh(self.covs_KDD)
        lam_KD = jnp.maximum(lam_KD, 0.0)  # round-off can make PSD eigenvalues slightly negative
        # Coordinates in the eigenbasis: y = U_k^T (x - alpha mu_k).
        ux_NKD = jnp.einsum("kde,nd->nke", u_KDD, x_ND)
        umu_KD = jnp.einsum("kde,kd->ke", u_KDD, self.means_KD)
        y_NKD = ux_NKD - alpha_N[:, None, None] * umu_KD[None]
        var_NKD = alpha_N[:, None, None] ** 2 * lam_KD[None] + sigma_N[:, None, None] ** 2
        logn_NK = -0.5 * (
            self.dim * _LOG_2PI + jnp.sum(jnp.log(var_NKD), axis=-1) + jnp.sum(y_NKD**2 / var_NKD, axis=-1)
        )
        return logn_NK, u_KDD, y_NKD / var_NKD

    @jax.jit
    def diffused_log_prob(self, x_ND, alpha_N, sigma_N) -> jax.Array:
        """log p_t(x_n) for the diffused mixture with each example's own (alpha_n, sigma_n).

        Equals `self.diffused(alpha_n, sigma_n).log_prob(x_n[None])[0]` for every n.
        `alpha_N`, `sigma_N` are shape (N,) or scalars; alpha^2 Sigma_k + sigma^2 I
        must be positive definite. Shape (N,).
        """
        logn_NK, _, _ = self._diffused_components(x_ND, alpha_N, sigma_N)
        return logsumexp(logn_NK + self.log_weights(), axis=-1)

    @jax.jit
    def diffused_score(self, x_ND, alpha_N, sigma_N) -> jax.Array:
        """grad_x log p_t(x_n) with per-example (alpha_n, sigma_n), shape (N, D).

        The exact score an oracle `score_fn(x, t)` returns: sum_k p(k | x_n)
        (-(alpha_n^2 Sigma_k + sigma_n^2 I)^{-1}(x_n - alpha_n mu_k)).
        """
        logn_NK, u_KDD, prec_y_NKD = self._diffused_components(x_ND, alpha_N, sigma_N)
        resp_NK = jax.nn.softmax(logn_NK + self.log_weights(), axis=-1)
        return -jnp.einsum("nk,kde,nke->nd", resp_NK, u_KDD, prec_y_NKD)


def gaussian_rings_mixture(num: int = 8, radius: float = 4.0, std: float = 0.5, weights_K=None) -> GaussianMixture:
    """`num` isotropic 2-D Gaussians with means radius * (cos 2 pi k/num, sin 2 pi k/num).

    Weights default to unequal, proportional to 1, 2, ..., num, so tests can tell
    a sampler that respects the weights from one that ignores them.
    """
    k = _check_num(num)
    if k < 1:
        raise ValueError(f"num must be >= 1, got {k}")
    radius = float(radius)
    if not (radius >= 0.0 and math.isfinite(radius)):
        raise ValueError(f"radius must be finite and >= 0, got {radius!r}")
    std = _check_positive("std", std)
    angles_K = 2.0 * np.pi * np.arange(k) / k
    means_K2 = radius * np.stack([np.cos(angles_K), np.sin(angles_K)], axis=-1)
    weights = np.arange(1, k + 1, dtype=np.float64) if weights_K is None else weights_K
    return GaussianMixture.isotropic(means_K2, std, weights)


def eight_gaussians_mixture(radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """FFJORD's 8 Gaussians: equal weights, means on a circle at multiples of 45 degrees."""
    return gaussian_rings_mixture(8, radius, std, np.ones(8))


# --------------------------------------------------------------------------------------
# The diffused mixture as an oracle
# --------------------------------------------------------------------------------------
#
# If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha(t) x_0 + sigma(t) eps, then
# x_t ~ sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), so its score and density are
# closed form: samplers and likelihoods can be checked with no training involved.
# `sde` is any object with `marginal_coeffs(t) -> (alpha, sigma)` (every
# `genjax.diffusion.sde.SDE`); the diffusion package is not imported here.


def exact_score_fn(sde, mixture: GaussianMixture) -> Callable:
    """score_fn(x, t) = grad log p_t(x) for data distributed as `mixture`, perturbed
    by the Gaussian marginal of `sde` at time t (shape (N,) or a scalar)."""

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return mixture.diffused_score(x, alpha, sigma)

    return score_fn


def exact_log_prob_fn(sde, mixture: GaussianMixture, t: float) -> Callable:
    """x -> log p_t(x), the exact marginal density of `mixture` perturbed by the
    Gaussian marginal of `sde` at a fixed time t."""

    def log_prob(x):
        alpha, sigma = sde.marginal_coeffs(t)
        return mixture.diffused_log_prob(x, alpha, sigma)

    return log_prob


# --------------------------------------------------------------------------------------
# Named 2-D densities
# --------------------------------------------------------------------------------------


class ToyDensity(NamedTuple):
    """A named 2-D benchmark density.

    sample:   (key, num) -> x_N2, jittable with `num` static.
    log_prob: x_N2 -> (N,) exact log-density in nats, or None when none is known.
    entropy:  differential entropy in nats, or None.
    """

    name: str
    sample: Callable[[jax.Array, int], jax.Array]
    log_prob: Callable[[jax.Array], jax.Array] | None
    entropy: float | None


def _np_mixture_log_prob(x_MD: np.ndarray, means_KD, covs_KDD, weights_K) -> np.ndarray:
    """Float64 NumPy log-density of a Gaussian mixture (reference for entropies)."""
    chol_KDD = np.linalg.cholesky(covs_KDD)
    d = means_KD.shape[1]
    logn_MK = np.empty((x_MD.shape[0], means_KD.shape[0]))
    for k in range(means_KD.shape[0]):
        z_DM = np.linalg.solve(chol_KDD[k], (x_MD - means_KD[k]).T)
        logdet = 2.0 * np.sum(np.log(np.diag(chol_KDD[k])))
        logn_MK[:, k] = -0.5 * (d * _LOG_2PI + logdet + np.sum(z_DM**2, axis=0))
    a_MK = logn_MK + np.log(weights_K)
    amax_M = a_MK.max(axis=1)
    return amax_M + np.log(np.exp(a_MK - amax_M[:, None]).sum(axis=1))


def _mixture_entropy(mixture: GaussianMixture, order: int = 64) -> float:
    """H = -sum_k w_k E_{N(mu_k, Sigma_k)}[log p(x)] by tensor Gauss-Hermite quadrature.

    Each expectation is over a Gaussian, so Hermite nodes mapped through mu_k + L_k z
    are the natural rule; log p is smooth, and at order 64 per axis the result for
    the default eight Gaussians agrees with a 0.01-spaced grid sum to ~1e-12 nats.
    Order^D points per component, so meant for D <= 3.
    """
    means = np.asarray(mixture.means_KD, np.float64)
    covs = np.asarray(mixture.covs_KDD, np.float64)
    w = np.asarray(mixture.weights_K, np.float64)
    w = w / w.sum()
    d = means.shape[1]
    z_1, wz_1 = np.polynomial.hermite_e.hermegauss(order)  # weight exp(-z^2 / 2)
    wz_1 = wz_1 / np.sqrt(2.0 * np.pi)
    grids = np.meshgrid(*([z_1] * d), indexing="ij")
    z_MD = np.stack([g.ravel() for g in grids], axis=-1)
    wz_M = np.prod(np.stack(np.meshgrid(*([wz_1] * d), indexing="ij"), axis=-1).reshape(-1, d), axis=-1)
    chol = np.linalg.cholesky(covs)
    h = 0.0
    for k in range(means.shape[0]):
        if w[k] == 0:
            continue
        x_MD = means[k] + z_MD @ chol[k].T
        h -= w[k] * np.sum(wz_M * _np_mixture_log_prob(x_MD, means, covs, w))
    return float(h)


def eight_gaussians(radius: float = 4.0, std: float = 0.5) -> ToyDensity:
    """Eight equally weighted Gaussians on a circle (Grathwohl et al. 2019, FFJORD).

    Exact log-density; the entropy comes from Gauss-Hermite quadrature (accurate to
    ~1e-12 nats). The mixture itself is `eight_gaussians_mixture(radius, std)`.
    """
    mixture = eight_gaussians_mixture(radius, std)
    return ToyDensity(
        name="eight_gaussians",
        sample=mixture.sample,
        log_prob=mixture.log_prob,
        entropy=_mixture_entropy(mixture),
    )


@functools.partial(jax.jit, static_argnames=("num",))
def _checkerboard_sample(key: jax.Array, num: int) -> jax.Array:
    n = _check_num(num)
    key_col, key_row, key_u = jax.random.split(key, 3)
    # Cells of side 2 indexed (i, j) in {0..3}^2; occupied iff i + j is even.
    i_N = jax.random.randint(key_col, (n,), 0, 4)
    j_N = 2 * jax.random.randint(key_row, (n,), 0, 2) + i_N % 2
    u_N2 = jax.random.uniform(key_u, (n, 2), dtype=jnp.float32)
    cell_N2 = jnp.stack([i_N, j_N], axis=-1).astype(jnp.float32)
    return 2.0 * (cell_N2 + u_N2) - 4.0


@jax.jit
def _checkerboard_log_prob(x_N2: jax.Array) -> jax.Array:
    x_N2 = jnp.asarray(x_N2, jnp.float32)
    if x_N2.ndim != 2 or x_N2.shape[1] != 2:
        raise ValueError(f"x_N2 must have shape (N, 2), got {x_N2.shape}")
    cell_N2 = jnp.floor((x_N2 + 4.0) / 2.0).astype(jnp.int32)
    in_box_N = jnp.all((cell_N2 >= 0) & (cell_N2 <= 3), axis=-1)
    on_black_N = (cell_N2[:, 0] + cell_N2[:, 1]) % 2 == 0
    return jnp.where(in_box_N & on_black_N, -math.log(32.0), -jnp.inf).astype(jnp.float32)


def checkerboard() -> ToyDensity:
    """FFJORD's checkerboard on [-4, 4]^2 (Grathwohl et al. 2019).

    Uniform on the 8 cells [2i-4, 2i-2) x [2j-4, 2j-2), i, j in {0..3}, with i + j
    even: total area 32, so log p = -ln 32 on the support and -inf off it, and the
    entropy is ln 32.
    """
    return ToyDensity(
        name="checkerboard",
        sample=_checkerboard_sample,
        log_prob=_checkerboard_log_prob,
        entropy=math.log(32.0),
    )


def _rings_radial_entropy(radii_K: np.ndarray, weights_K: np.ndarray, std: float) -> float:
    """H = -int_0^inf p_R(r) log(p_R(r) / (2 pi r)) dr by composite Gauss-Legendre.

    Panels of width std / 4 with 16 nodes each; the integrable p_R(0) log r at the
    origin is handled by halving the first panel geometrically (hp-refinement),
    which keeps the rule accurate to ~1e-12 even when p_R(0) > 0.
    """
    r_max = float(np.max(radii_K)) + 14.0 * std
    num_panels = int(math.ceil(r_max / (0.25 * std)))
    edges = np.linspace(0.0, r_max, num_panels + 1)
    edges = np.concatenate([[0.0], edges[1] * 2.0 ** -np.arange(60.0, 0.0, -1.0), edges[1:]])
    t_Q, wt_Q = np.polynomial.legendre.leggauss(16)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    r_M = (mid[:, None] + half[:, None] * t_Q[None]).ravel()
    wr_M = (half[:, None] * wt_Q[None]).ravel()
    logp_r_M = _np_folded_log_pdf(r_M, radii_K, weights_K, std)
    p_r_M = np.exp(logp_r_M)
    return float(-np.sum(wr_M * p_r_M * (logp_r_M - np.log(2.0 * np.pi * r_M))))


def _np_folded_log_pdf(r_M, radii_K, weights_K, std):
    """log p_R(r) for R = |r_k + std * eps|, k ~ Cat(w), in float64."""
    z_MK2 = np.stack([(r_M[:, None] - radii_K) / std, (r_M[:, None] + radii_K) / std], axis=-1)
    a = -0.5 * z_MK2**2 - 0.5 * _LOG_2PI - math.log(std) + np.log(weights_K)[None, :, None]
    a = a.reshape(len(r_M), -1)
    amax = a.max(axis=1)
    return amax + np.log(np.exp(a - amax[:, None]).sum(axis=1))


def rings(radii=(0.75, 1.5, 2.25, 3.0), std: float = 0.08, weights=None) -> ToyDensity:
    """Concentric rings with an exact density (after Grathwohl et al. 2019, FFJORD).

    FFJORD's rings add isotropic 2-D noise to points on circles, whose density is a
    Bessel-function integral. Here the noise is radial instead: k ~ Cat(w), radius
    R = |r_k + std * eps| (a folded normal), angle uniform. Then exactly

        p(x) = sum_k w_k [N(|x|; r_k, std^2) + N(-|x|; r_k, std^2)] / (2 pi |x|).

    Defaults are FFJORD's radii (0.75, 1.5, 2.25, 3.0), noise 0.08 and equal weights.
    The entropy is a 1-D radial integral, computed by quadrature (~1e-12 nats). The
    density is +inf at the origin when p_R(0) > 0; `log_prob` clamps |x| at 1e-15 so
    it stays finite and differentiable there.
    """
    radii_np = np.asarray(radii, dtype=np.float64)
    if radii_np.ndim != 1 or radii_np.size < 1:
        raise ValueError(f"radii must be a non-empty 1-D sequence, got shape {radii_np.shape}")
    if not np.all(np.isfinite(radii_np)) or np.any(radii_np < 0):
        raise ValueError(f"radii must be finite and >= 0, got {radii_np.tolist()}")
    std = _check_positive("std", std)
    k = radii_np.size
    w_np = np.ones(k) / k if weights is None else _check_weights(weights, k, "weights")
    radii_K = jnp.asarray(radii_np, jnp.float32)
    logw_K = jnp.asarray(np.log(w_np), jnp.float32)

    @functools.partial(jax.jit, static_argnames=("num",))
    def sample(key: jax.Array, num: int) -> jax.Array:
        n = _check_num(num)
        key_k, key_eps, key_theta = jax.random.split(key, 3)
        k_N = jax.random.categorical(key_k, logw_K, shape=(n,))
        r_N = jnp.abs(radii_K[k_N] + std * jax.random.normal(key_eps, (n,), jnp.float32))
        theta_N = jax.random.uniform(key_theta, (n,), jnp.float32, 0.0, 2.0 * math.pi)
        return r_N[:, None] * jnp.stack([jnp.cos(theta_N), jnp.sin(theta_N)], axis=-1)

    @jax.jit
    def log_prob(x_N2: jax.Array) -> jax.Array:
        x_N2 = jnp.asarray(x_N2, jnp.float32)
        if x_N2.ndim != 2 or x_N2.shape[1] != 2:
            raise ValueError(f"x_N2 must have shape (N, 2), got {x_N2.shape}")
        r_N = jnp.sqrt(jnp.maximum(jnp.sum(x_N2**2, axis=-1), 1e-30))
        z_NK2 = jnp.stack([r_N[:, None] - radii_K, r_N[:, None] + radii_K], axis=-1) / std
        a_NK2 = -0.5 * z_NK2**2 + logw_K[None, :, None]
        log_pr_N = logsumexp(a_NK2.reshape(r_N.shape[0], -1), axis=-1) - 0.5 * _LOG_2PI - math.log(std)
        return log_pr_N - jnp.log(2.0 * math.pi * r_N)

    return ToyDensity(
        name="rings",
        sample=sample,
        log_prob=log_prob,
        entropy=_rings_radial_entropy(radii_np, w_np, std),
    )


def pinwheel(
    num_arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1, rate: float = 0.25
) -> ToyDensity:
    """Pinwheel (Johnson et al. 2016, SVAE; as used in FFJORD), sampler only.

    f ~ N((1, 0), diag(radial_std^2, tangential_std^2)) is rotated by
    2 pi a / num_arms + rate * exp(f_0) for a uniform arm a, then scaled by 2.
    """
    arms = _check_num(num_arms)
    if arms < 1:
        raise ValueError(f"num_arms must be >= 1, got {arms}")
    radial_std = _check_positive("radial_std", radial_std)
    tangential_std = _check_positive("tangential_std", tangential_std)
    rate = float(rate)

    @functools.partial(jax.jit, static_argnames=("num",))
    def sample(key: jax.Array, num: int) -> jax.Array:
        n = _check_num(num)
        key_arm, key_f = jax.random.split(key)
        arm_N = jax.random.randint(key_arm, (n,), 0, arms)
        f_N2 = jax.random.normal(key_f, (n, 2), jnp.float32) * jnp.array([radial_std, tangential_std])
        f_N2 = f_N2.at[:, 0].add(1.0)
        angle_N = 2.0 * math.pi * arm_N / arms + rate * jnp.exp(f_N2[:, 0])
        c_N, s_N = jnp.cos(angle_N), jnp.sin(angle_N)
        x_N = c_N * f_N2[:, 0] - s_N * f_N2[:, 1]
        y_N = s_N * f_N2[:, 0] + c_N * f_N2[:, 1]
        return 2.0 * jnp.stack([x_N, y_N], axis=-1)

    return ToyDensity(name="pinwheel", sample=sample, log_prob=None, entropy=None)


def two_moons(noise: float = 0.1) -> ToyDensity:
    """Two interleaved half circles (scikit-learn's make_moons), sampler only.

    A uniform label picks the upper arc (cos t, sin t) or the lower arc
    (1 - cos t, 0.5 - sin t), t ~ U[0, pi]; Gaussian noise of std `noise` is added,
    then FFJORD's map x -> 2x + (-1, -0.2) centres it in [-4, 4]^2.
    """
    noise = _check_noise(noise)

    @functools.partial(jax.jit, static_argnames=("num",))
    def sample(key: jax.Array, num: int) -> jax.Array:
        n = _check_num(num)
        key_label, key_t, key_eps = jax.random.split(key, 3)
        lower_N = jax.random.bernoulli(key_label, 0.5, (n,))
        t_N = jax.random.uniform(key_t, (n,), jnp.float32, 0.0, math.pi)
        upper_N2 = jnp.stack([jnp.cos(t_N), jnp.sin(t_N)], axis=-1)
        lower_N2 = jnp.stack([1.0 - jnp.cos(t_N), 0.5 - jnp.sin(t_N)], axis=-1)
        x_N2 = jnp.where(lower_N[:, None], lower_N2, upper_N2)
        x_N2 = x_N2 + noise * jax.random.normal(key_eps, (n, 2), jnp.float32)
        return 2.0 * x_N2 + jnp.array([-1.0, -0.2], jnp.float32)

    return ToyDensity(name="two_moons", sample=sample, log_prob=None, entropy=None)


def swiss_roll(noise: float = 1.0) -> ToyDensity:
    """2-D Swiss roll (scikit-learn's make_swiss_roll, (x, z) plane), sampler only.

    t ~ U[1.5 pi, 4.5 pi], x = (t cos t, t sin t) + noise * eps, then divided by 5
    as in FFJORD, so the roll fits in [-4, 4]^2.
    """
    noise = _check_noise(noise)

    @functools.partial(jax.jit, static_argnames=("num",))
    def sample(key: jax.Array, num: int) -> jax.Array:
        n = _check_num(num)
        key_t, key_eps = jax.random.split(key)
        t_N = jax.random.uniform(key_t, (n,), jnp.float32, 1.5 * math.pi, 4.5 * math.pi)
        x_N2 = t_N[:, None] * jnp.stack([jnp.cos(t_N), jnp.sin(t_N)], axis=-1)
        x_N2 = x_N2 + noise * jax.random.normal(key_eps, (n, 2), jnp.float32)
        return x_N2 / 5.0

    return ToyDensity(name="swiss_roll", sample=sample, log_prob=None, entropy=None)


# --------------------------------------------------------------------------------------
# Mode-collapse benchmarks (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018)
# --------------------------------------------------------------------------------------


def grid25_mixture(spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """25 equally weighted Gaussians N(mu, std^2 I), mu in {-2, -1, 0, 1, 2}^2 * spacing.

    Row-major order: component 5 i + j sits at (spacing (i - 2), spacing (j - 2)).
    """
    spacing = _check_positive("spacing", spacing)
    std = _check_positive("std", std)
    ticks = spacing * np.arange(-2.0, 3.0)
    means_K2 = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 2)
    return GaussianMixture.isotropic(means_K2, std)


def grid25(spacing: float = 2.0, std: float = 0.05) -> ToyDensity:
    """The 5 x 5 grid of Gaussians of the mode-collapse benchmarks (Srivastava et al.
    2017, "VEEGAN", sec. 5.1; Lin et al. 2018, "PacGAN", sec. 5): means at
    {-4, -2, 0, 2, 4}^2, std 0.05, equal weights. Exact log-density; entropy by
    Gauss-Hermite quadrature (= ln 25 + ln(2 pi e std^2) up to the negligible overlap).
    The mixture, with its mode centres, is `grid25_mixture(spacing, std)`."""
    mixture = grid25_mixture(spacing, std)
    return ToyDensity(name="grid25", sample=mixture.sample, log_prob=mixture.log_prob,
                      entropy=_mixture_entropy(mixture))


def ring8_mixture(radius: float = 2.0, std: float = 0.02) -> GaussianMixture:
    """8 equally weighted Gaussians N(mu_k, std^2 I), mu_k = radius (cos 2 pi k/8, sin 2 pi k/8)."""
    return gaussian_rings_mixture(8, radius, std, np.ones(8))


def ring8(radius: float = 2.0, std: float = 0.02) -> ToyDensity:
    """The ring of 8 Gaussians of the mode-collapse benchmarks (Metz et al. 2017,
    "Unrolled GANs", sec. 3.1; VEEGAN; PacGAN): radius 2, std 0.02, equal weights.
    Exact log-density; entropy by Gauss-Hermite quadrature. The mixture, with its
    mode centres, is `ring8_mixture(radius, std)`."""
    mixture = ring8_mixture(radius, std)
    return ToyDensity(name="ring8", sample=mixture.sample, log_prob=mixture.log_prob,
                      entropy=_mixture_entropy(mixture))
