"""The persistent replay buffer of short-run SGLD chains (Du & Mordatch 2019,
Algorithm 1; persistent contrastive divergence, Tieleman 2008).

The buffer is M past chain states. Each training update draws B distinct slots at
random; each chain starts from its slot's state, except that a fraction
`reinit_prob` (Du & Mordatch: 5%) restart from uniform noise on the box
[low, high], which keeps new modes reachable. After K SGLD steps the chains'
final states are written back to the slots they came from, so the buffer holds
chains that have each run for many updates' worth of steps.

The buffer is model state in the sense of `genjax.core.Model`: a dict
{"x": array (M, *data_shape)}, threaded through the loss by the trainer,
checkpointed and vmapped with the parameters, never differentiated or averaged.
All randomness comes from the loss's key, so the buffer needs no key of its own.
"""
import jax
import jax.numpy as jnp

from genjax.core import check_int


def uniform_noise(key, shape, low: float, high: float) -> jax.Array:
    """Chains' starting points: uniform on the box [low, high]^D."""
    return jax.random.uniform(key, shape, jnp.float32, low, high)


def init_buffer(key, size: int, data_shape: tuple, *, low: float, high: float) -> dict:
    """A buffer of `size` states drawn from uniform noise on the box."""
    size = check_int("buffer_size", size, 1)
    return {"x": uniform_noise(key, (size,) + tuple(data_shape), low, high)}


def draw(key, buffer: dict, batch: int, *, reinit_prob: float, low: float, high: float):
    """Starting points of `batch` chains: (slots_B, x_B, fresh_B).

    slots_B are distinct buffer indices (uniform without replacement, so writing
    back never collides); x_B is each slot's state, or uniform noise where fresh_B
    (probability `reinit_prob`, independently per chain).
    """
    size = buffer["x"].shape[0]
    if batch > size:
        raise ValueError(f"a batch of {batch} chains needs a buffer of at least {batch} states; got {size}")
    k_slot, k_fresh, k_noise = jax.random.split(key, 3)
    slots_B = jax.random.choice(k_slot, size, (batch,), replace=False)
    fresh_B = jax.random.bernoulli(k_fresh, reinit_prob, (batch,))
    x_B = buffer["x"][slots_B]
    noise = uniform_noise(k_noise, x_B.shape, low, high)
    mask = jnp.reshape(fresh_B, (batch,) + (1,) * (x_B.ndim - 1))
    return slots_B, jnp.where(mask, noise, x_B), fresh_B


def store(buffer: dict, slots_B: jax.Array, x_B: jax.Array) -> dict:
    """The buffer with the chains' final states written to the slots they came from."""
    return {**buffer, "x": buffer["x"].at[slots_B].set(jax.lax.stop_gradient(x_B))}
