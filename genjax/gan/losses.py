"""GAN objectives on critic outputs, and the gradient penalties.

Notation: r_N = D(x_real), f_N = D(G(z)) are the critic's outputs on a batch of
data and of generator samples; for the logit losses D(x) = sigmoid(r), and
softplus(a) = log(1 + e^a), so -log sigmoid(a) = softplus(-a). Every loss is a
mean over the batch; the critic minimizes its loss over the critic's parameters
and the generator its own over the generator's.
"""
from typing import Callable

import jax
import jax.numpy as jnp


def non_saturating_critic_loss(real_N, fake_N) -> jax.Array:
    """-E log D(x) - E log(1 - D(G(z))): the discriminator's cross-entropy
    (Goodfellow et al. 2014, eq. 1), = mean softplus(-r) + mean softplus(f)."""
    return jnp.mean(jax.nn.softplus(-real_N)) + jnp.mean(jax.nn.softplus(fake_N))


def non_saturating_generator_loss(fake_N) -> jax.Array:
    """-E log D(G(z)) = mean softplus(-f): the generator loss that does not saturate
    when the discriminator rejects its samples (Goodfellow et al. 2014, sec. 3)."""
    return jnp.mean(jax.nn.softplus(-fake_N))


def hinge_critic_loss(real_N, fake_N) -> jax.Array:
    """E max(0, 1 - D(x)) + E max(0, 1 + D(G(z))) (Lim & Ye 2017; Miyato et al.
    2018, eq. 16)."""
    return jnp.mean(jax.nn.relu(1.0 - real_N)) + jnp.mean(jax.nn.relu(1.0 + fake_N))


def hinge_generator_loss(fake_N) -> jax.Array:
    """-E D(G(z)) (Miyato et al. 2018, eq. 17)."""
    return -jnp.mean(fake_N)


def wasserstein_critic_loss(real_N, fake_N) -> jax.Array:
    """E D(G(z)) - E D(x): minus the Kantorovich-Rubinstein estimate of W1 when D
    is 1-Lipschitz (Arjovsky et al. 2017, eq. 3; Gulrajani et al. 2017, eq. 3)."""
    return jnp.mean(fake_N) - jnp.mean(real_N)


def wasserstein_generator_loss(fake_N) -> jax.Array:
    """-E D(G(z)) (Arjovsky et al. 2017, Algorithm 1)."""
    return -jnp.mean(fake_N)


# name -> (critic loss, generator loss), for `genjax.gan.model.make_gan_model`
LOSSES: dict[str, tuple[Callable, Callable]] = {
    "non_saturating": (non_saturating_critic_loss, non_saturating_generator_loss),
    "hinge": (hinge_critic_loss, hinge_generator_loss),
    "wgan_gp": (wasserstein_critic_loss, wasserstein_generator_loss),
}


def input_gradient_sq_norms(critic_fn: Callable, x_N) -> jax.Array:
    """||grad_x D(x_n)||_2^2 per example, shape (N,). `critic_fn(x_N) -> (N,)` must
    treat examples independently, so the gradient of the sum is per example."""
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_N)
    return jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1)


def gradient_penalty(key, critic_fn: Callable, real_N, fake_N) -> jax.Array:
    """E_{x_hat} (||grad D(x_hat)||_2 - 1)^2 at x_hat = e x + (1 - e) x_fake,
    e ~ U[0, 1] per example (Gulrajani et al. 2017, eq. 3; times lambda = 10
    there). A two-sided penalty: 0 for a critic linear with a unit-norm weight w,
    (||w|| - 1)^2 for any other linear critic. The norm is sqrt(s + 1e-12), so a
    zero gradient (dead ReLUs) has a finite derivative."""
    if real_N.shape != fake_N.shape:
        raise ValueError(f"real and fake batches have shapes {real_N.shape} and {fake_N.shape}; expected equal")
    e = jax.random.uniform(key, (real_N.shape[0],) + (1,) * (real_N.ndim - 1), real_N.dtype)
    x_hat = e * real_N + (1.0 - e) * fake_N
    norms = jnp.sqrt(input_gradient_sq_norms(critic_fn, x_hat) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def r1_penalty(critic_fn: Callable, real_N) -> jax.Array:
    """E_x ||grad D(x)||_2^2 on real data (Mescheder et al. 2018, eq. 9, where it is
    weighted by gamma / 2)."""
    return jnp.mean(input_gradient_sq_norms(critic_fn, real_N))
