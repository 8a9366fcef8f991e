"""genjax: generative models in JAX/Flax.

The math core. Every function here is pure and safe under `jax.jit`, `jax.vmap`,
`jax.grad` and sharding; file I/O, flags and logging live in `experiments/`.
"""
