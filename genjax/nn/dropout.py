"""Dropout whose rate may be a traced value.

Inverted dropout (Srivastava et al. 2014, with the 1 / (1 - rate) scaling at
training time): y = mask * x / (1 - rate), mask ~ Bernoulli(1 - rate).

`flax.linen.Dropout` branches on its rate in Python (`rate == 0`), so the rate
must be a concrete number. Here a traced rate is allowed too: an ablation then
trains members with different dropout rates in one compiled program
(`experiments.ablate`). A concrete rate of 0 returns the input untouched; a
traced rate of 0 draws an all-ones mask and returns x / 1, the same numbers.
The mask is drawn from the module's 'dropout' RNG exactly as flax's Dropout
draws it, and 1 - rate is formed in float32 whether the rate is concrete or
traced, so a member drops the same entries as the run trained alone with that
rate (x / (1 - rate) may round differently once compiled: 1 ulp).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class Dropout(nn.Module):
    """Drop each entry with probability `rate` (float or traced scalar in [0, 1))."""

    rate: float | jax.Array
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0):
            return inputs
        keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, inputs.shape)
        return jnp.where(mask, inputs / keep.astype(inputs.dtype), jnp.zeros_like(inputs))
