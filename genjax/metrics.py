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


def _sqrtm_psd(cov_DD) -> jax.Array:
    """Symmetric square root of a PSD matrix through eigh, negative rounding
    errors in the eigenvalues clipped to zero."""
    evals, evecs = jnp.linalg.eigh(cov_DD)
    return (evecs * jnp.sqrt(jnp.clip(evals, 0.0))[None, :]) @ evecs.T


def gaussian_frechet(mu_a_D, cov_a_DD, mu_b_D, cov_b_DD) -> jax.Array:
    """Squared Fréchet (2-Wasserstein) distance between N(mu_a, S_a) and N(mu_b, S_b)
    (Dowson & Landau 1982; the FID of Heusel et al. 2017, eq. 6):

        ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

    tr((S_a S_b)^{1/2}) is the sum of the square roots of the eigenvalues of the
    PSD matrix S_a^{1/2} S_b S_a^{1/2} (same spectrum as S_a S_b). These are the
    squared singular values of S_a^{1/2} S_b^{1/2}, so the trace is computed as
    that matrix's nuclear norm: no eigenvalue is squared and square-rooted
    again, which in float32 would cost about sqrt(eps) of the largest one per
    small eigenvalue. The symmetric square roots come from eigh, with negative
    rounding errors clipped to zero; so is the result.
    """
    mu_a_D, mu_b_D = jnp.asarray(mu_a_D), jnp.asarray(mu_b_D)
    cov_a_DD, cov_b_DD = jnp.asarray(cov_a_DD), jnp.asarray(cov_b_DD)
    if mu_a_D.ndim != 1:
        raise ValueError(f"mu_a has shape {mu_a_D.shape}; expected (D,)")
    d = mu_a_D.shape[0]
    for name, a, shape in (("mu_a", mu_a_D, (d,)), ("cov_a", cov_a_DD, (d, d)),
                           ("mu_b", mu_b_D, (d,)), ("cov_b", cov_b_DD, (d, d))):
        if a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape}; expected {shape}")
    singular = jnp.linalg.svd(_sqrtm_psd(cov_a_DD) @ _sqrtm_psd(cov_b_DD), compute_uv=False)
    trace_sqrt = jnp.sum(singular)
    dist = jnp.sum((mu_a_D - mu_b_D) ** 2) + jnp.trace(cov_a_DD) + jnp.trace(cov_b_DD) - 2.0 * trace_sqrt
    return jnp.maximum(dist, 0.0)


def frechet_distance(feat_a_NF, feat_b_MF) -> jax.Array:
    """Fréchet distance between two feature sets (Heusel et al. 2017, eq. 6): the
    `gaussian_frechet` distance between Gaussians with their sample means and
    (unbiased, ddof=1) covariances. With classifier features this is an FID-like
    score. It is biased upwards at finite sample sizes, so compare scores only at
    equal set sizes."""
    feat_a_NF, feat_b_MF = jnp.asarray(feat_a_NF), jnp.asarray(feat_b_MF)
    if feat_a_NF.ndim != 2 or feat_b_MF.ndim != 2 or feat_a_NF.shape[1] != feat_b_MF.shape[1]:
        raise ValueError(f"feature sets have shapes {feat_a_NF.shape} and {feat_b_MF.shape}; "
                         "expected (N, F) and (M, F) with the same F")
    if feat_a_NF.shape[0] < 2 or feat_b_MF.shape[0] < 2:
        raise ValueError(f"feature sets have shapes {feat_a_NF.shape} and {feat_b_MF.shape}; "
                         "expected at least 2 rows each for a covariance")
    moments = lambda f: (jnp.mean(f, axis=0), jnp.cov(f, rowvar=False))
    return gaussian_frechet(*moments(feat_a_NF), *moments(feat_b_MF))


def mode_coverage(x_ND, centers_KD, std, num_std: float = 3.0) -> dict:
    """Mode-collapse statistics of samples from a model of a mixture of K isotropic
    Gaussians N(c_k, std^2 I) with equal weights (Srivastava et al. 2017, "VEEGAN",
    sec. 5.1; Lin et al. 2018, "PacGAN", sec. 5 and Table 1):

      high_quality_fraction  the fraction of samples within num_std * std (3, as in
                             VEEGAN and PacGAN) of their nearest centre
      modes                  the number of centres that are the nearest centre of
                             at least one high-quality sample
      reverse_kl             KL(q || uniform) = sum_k q_k log(K q_k) in nats, q the
                             histogram of the high-quality samples' nearest centres
                             (PacGAN's convention: KL from the model's mode
                             distribution to the data's); 0 for perfect balance,
                             log K for one mode, 0 log 0 = 0; NaN when no sample is
                             high quality
      mode_counts            the histogram itself, (K,) int32

    Pure jnp (jit/vmap-safe): `modes` is int32, the rest float32. A finite sample of
    N from a perfect model has E[reverse_kl] ~ (K - 1) / (2 N) (the chi-square
    limit), e.g. 0.005 for K = 25, N = 2500.
    """
    x_ND = jnp.asarray(x_ND, jnp.float32)
    centers_KD = jnp.asarray(centers_KD, jnp.float32)
    if x_ND.ndim != 2 or centers_KD.ndim != 2 or x_ND.shape[1] != centers_KD.shape[1]:
        raise ValueError(f"samples have shape {x_ND.shape} and centres {centers_KD.shape}; "
                         "expected (N, D) and (K, D) with the same D")
    if isinstance(std, (int, float)) and not std > 0:
        raise ValueError(f"std={std!r}; expected a number > 0")
    num_modes = centers_KD.shape[0]
    d2_NK = jnp.sum((x_ND[:, None, :] - centers_KD[None, :, :]) ** 2, axis=-1)
    nearest_N = jnp.argmin(d2_NK, axis=1)
    high_quality_N = jnp.min(d2_NK, axis=1) <= (num_std * std) ** 2
    counts_K = jnp.zeros(num_modes, jnp.int32).at[nearest_N].add(high_quality_N.astype(jnp.int32))
    total = jnp.sum(counts_K)
    q_K = counts_K / jnp.maximum(total, 1)
    terms_K = jnp.where(counts_K > 0, q_K * jnp.log(jnp.where(counts_K > 0, q_K * num_modes, 1.0)), 0.0)
    reverse_kl = jnp.where(total > 0, jnp.sum(terms_K), jnp.nan)
    return {
        "modes": jnp.sum(counts_K > 0).astype(jnp.int32),
        "high_quality_fraction": jnp.mean(high_quality_N.astype(jnp.float32)),
        "reverse_kl": reverse_kl.astype(jnp.float32),
        "mode_counts": counts_K,
    }


def class_coverage(labels_N, num_classes: int) -> dict:
    """How evenly samples cover the classes, from the labels a classifier gives them:

      class_fractions  (num_classes,) the fraction of samples in each class
      class_entropy    the entropy of that histogram in nats: ln(num_classes) when
                       every class is equally frequent, 0 when all are one class
                       (0 log 0 = 0)

    Pure jnp; labels outside 0..num_classes-1 raise nothing but count nowhere.
    """
    labels_N = jnp.asarray(labels_N)
    if labels_N.ndim != 1 or labels_N.shape[0] < 1:
        raise ValueError(f"labels have shape {labels_N.shape}; expected (N,) with N >= 1")
    counts = jnp.zeros(num_classes, jnp.float32).at[labels_N].add(1.0, mode="drop")
    fractions = counts / labels_N.shape[0]
    entropy = -jnp.sum(jnp.where(fractions > 0, fractions * jnp.log(jnp.where(fractions > 0, fractions, 1.0)), 0.0))
    return {"class_fractions": fractions, "class_entropy": entropy}


MEMORIZATION_NEIGHBOURS = 50     # n of Carlini et al. 2023 (the neighbours that calibrate d1)
MEMORIZATION_THRESHOLD = 1.0 / 3.0


def memorization(x_ND, train_MD, num_neighbours: int = MEMORIZATION_NEIGHBOURS,
                 threshold: float = MEMORIZATION_THRESHOLD, chunk_size: int = 64) -> dict:
    """Near-copies of training images among the queries `x_ND`, by the calibrated
    ℓ2 distance of Carlini et al. 2023 ("Extracting Training Data from Diffusion
    Models", sec. 5.1): the Euclidean distance d1 from a query to its nearest
    training image, divided by the mean Euclidean distance from the query to its
    next `num_neighbours` nearest training images (ranks 2 .. n + 1; n = 50 in the
    paper). A query is a near-copy when

        d1 < threshold * mean_{j = 2..n+1} d_j            (threshold 1/3),

    i.e. it is much closer to one training image than to the training images
    around it: a copy of that image rather than a new point of a dense region.
    The ratio is invariant to the scale of the data (levels or [-1, 1] alike).

      ratio         (N,) d1 / mean_{j=2..n+1} d_j (0 for an exact copy)
      near_copy     (N,) bool, ratio < threshold
      fraction      the fraction of near-copies
      nearest       (N,) int32, the index of the nearest training image
      d1            (N,) the distance to it
      mean_next     (N,) the mean distance to the next n

    Images of any shape are flattened. The distances are computed as differences
    (not through |a|^2 + |b|^2 - 2ab, which cancels for near-copies), for
    `chunk_size` queries at a time (`jax.lax.map`), so memory is
    chunk_size * M * D floats; jit-safe for static shapes.
    """
    x_ND = jnp.reshape(jnp.asarray(x_ND, jnp.float32), (jnp.shape(x_ND)[0], -1))
    train_MD = jnp.reshape(jnp.asarray(train_MD, jnp.float32), (jnp.shape(train_MD)[0], -1))
    if x_ND.shape[1] != train_MD.shape[1]:
        raise ValueError(f"queries have {x_ND.shape[1]} dimensions and training images {train_MD.shape[1]}; "
                         "expected equal")
    if not isinstance(num_neighbours, int) or not 1 <= num_neighbours < train_MD.shape[0]:
        raise ValueError(f"num_neighbours={num_neighbours!r}; expected an integer from 1 to "
                         f"{train_MD.shape[0] - 1} (the training images but the nearest)")
    if not 0 < threshold:
        raise ValueError(f"threshold={threshold!r}; expected a number > 0")

    def nearest(x_D):
        d_M = jnp.sqrt(jnp.sum((train_MD - x_D[None, :]) ** 2, axis=-1))
        neg, index = jax.lax.top_k(-d_M, num_neighbours + 1)
        return -neg, index[0]

    d_NK, nearest_N = jax.lax.map(nearest, x_ND, batch_size=chunk_size)
    d1_N = d_NK[:, 0]
    mean_next_N = jnp.mean(d_NK[:, 1:], axis=1)
    ratio_N = d1_N / jnp.maximum(mean_next_N, jnp.finfo(jnp.float32).tiny)
    near_copy_N = ratio_N < threshold
    return {"ratio": ratio_N, "near_copy": near_copy_N,
            "fraction": jnp.mean(near_copy_N.astype(jnp.float32)),
            "nearest": nearest_N.astype(jnp.int32), "d1": d1_N, "mean_next": mean_next_N}
