"""The VQ-VAE (van den Oord et al. 2017) as a `genjax.core.Model`.

    x -> z_e(x) (N, h, w, D) -> z_q: nearest codes of the EMA codebook
      -> decoder(z_e + stop_gradient(z_q - z_e)) -> logits of p(x | z_q)

on discrete images x in {0..L-1}^D with the categorical decoder of
`genjax.vae.likelihood`. Loss per batch (eq. 3 with the codebook term replaced by
EMA updates, App. A.1):

    -E_batch log p(x | z_q(x)) + beta E_batch ||z_e(x) - stop_gradient(z_q(x))||^2

beta = commitment_weight (0.25 in the paper), the squared norm summed over the
grid and code dimensions. The loss returns the updated codebook state
(`genjax.vae.quantize.ema_codebook_update`): the model state.

Metrics: reconstruction_nll (nats per image), reconstruction_mse (per pixel, in
model space [-1, 1], of the most probable reconstruction's cell centres),
commitment, perplexity (exp of the entropy of the batch's code usage) and
codes_used (distinct codes in the batch).

No likelihood: log_prob is None, since no prior over the codes is trained (the
paper fits a PixelCNN over the code grid afterwards). `sample` decodes code grids
drawn independently per cell from the codebook's EMA usage frequencies N_i / sum N
(a unigram prior over codes): a view of what the codebook holds, not a model of
the data.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from genjax.core import Model, check_int, unconditional_batch
from genjax.vae import likelihood, quantize
from genjax.data import images as images_lib


def make_vqvae_model(encoder: nn.Module, decoder: nn.Module, *, data_shape: tuple, num_levels: int,
                     codebook_size: int, code_dim: int, commitment_weight: float = 0.25,
                     codebook_decay: float = 0.99, epsilon: float = 1e-5,
                     codebook_init_scale: float = 1.0) -> Model:
    """VQ-VAE (module docstring).

    encoder.apply({"params": p}, x_NHWC) -> z_e (N, h, w, code_dim);
    decoder.apply({"params": p}, z (N, h, w, code_dim)) -> logits (N, *data_shape, num_levels).
    codebook_decay: gamma of the EMA updates, in [0, 1). Parameters are
    {"encoder", "decoder"}; the codebook is the model state.
    sample(params, key, num, method="ancestral" | "mode", model_state=...).
    """
    data_shape = tuple(data_shape)
    codebook_size = check_int("codebook_size", codebook_size, 1)
    code_dim = check_int("code_dim", code_dim, 1)
    num_levels = check_int("num_levels", num_levels, 2)
    if not float(commitment_weight) >= 0:
        raise ValueError(f"commitment_weight={commitment_weight!r}; expected a number >= 0 (the paper: 0.25)")
    if not 0.0 <= float(codebook_decay) < 1.0:
        raise ValueError(f"codebook_decay={codebook_decay!r}; expected a number in [0, 1) (the paper: 0.99)")

    def images_of(batch):
        return unconditional_batch("VQ-VAE", batch, data_shape)

    def levels_and_input(y):
        levels = likelihood.levels_of(y, num_levels)
        return levels, images_lib.level_centres(levels, num_levels)

    def init(key, batch):
        _, x = levels_and_input(images_of(batch))
        e_key, d_key = jax.random.split(key)
        encoder_params = encoder.init(e_key, x)["params"]
        z_e = encoder.apply({"params": encoder_params}, x)
        if z_e.shape[-1] != code_dim:
            raise ValueError(f"the encoder's output has {z_e.shape[-1]} channels; expected code_dim={code_dim}")
        return {"encoder": encoder_params, "decoder": decoder.init(d_key, z_e)["params"]}

    def init_model_state(key, batch):
        images_of(batch)
        return quantize.init_codebook_state(key, codebook_size, code_dim, codebook_init_scale)

    def loss(params, key, batch, model_state):
        del key  # deterministic
        levels, x = levels_and_input(images_of(batch))
        z_e = encoder.apply({"params": params["encoder"]}, x)
        z_MD = z_e.reshape(-1, code_dim)
        codes_M = quantize.nearest_codes(jax.lax.stop_gradient(z_MD), model_state["codebook"])
        z_q = model_state["codebook"][codes_M].reshape(z_e.shape)
        logits = decoder.apply({"params": params["decoder"]}, quantize.straight_through(z_e, z_q))
        log_lik_N = likelihood.categorical_log_likelihood(logits, levels)
        commitment = jnp.mean(jnp.sum(((z_e - jax.lax.stop_gradient(z_q)) ** 2).reshape(z_e.shape[0], -1), axis=1))
        value = -jnp.mean(log_lik_N) + commitment_weight * commitment
        reconstruction = images_lib.level_centres(likelihood.most_probable_levels(logits), num_levels)
        metrics = {
            "reconstruction_nll": -jnp.mean(log_lik_N),
            "reconstruction_mse": jnp.mean((jax.lax.stop_gradient(reconstruction) - x) ** 2),
            "commitment": commitment,
            "perplexity": quantize.codebook_perplexity(codes_M, codebook_size),
            "codes_used": jnp.sum(jnp.bincount(codes_M, length=codebook_size) > 0).astype(jnp.float32),
        }
        new_state = quantize.ema_codebook_update(model_state, z_MD, codes_M, decay=codebook_decay,
                                                 epsilon=epsilon)
        return value, (metrics, new_state)

    def sample(params, key, num, method="ancestral", model_state=None):
        if model_state is None:
            raise ValueError("VQ-VAE sampling needs model_state (the codebook)")
        if method not in ("ancestral", "mode"):
            raise ValueError(f"unknown VQ-VAE sampler {method!r}; expected 'ancestral' or 'mode'")
        num = check_int("num", num, 1)
        c_key, x_key = jax.random.split(key)
        example = jnp.zeros((1,) + data_shape)
        grid = jax.eval_shape(lambda x: encoder.apply({"params": params["encoder"]}, x), example).shape[1:3]
        usage = jnp.asarray(model_state["cluster_size"])
        codes = jax.random.categorical(c_key, jnp.log(usage / jnp.sum(usage)), shape=(num,) + tuple(grid))
        logits = decoder.apply({"params": params["decoder"]}, jnp.asarray(model_state["codebook"])[codes])
        levels = (likelihood.sample_levels(x_key, logits) if method == "ancestral"
                  else likelihood.most_probable_levels(logits))
        return images_lib.level_centres(levels, num_levels)

    return Model(init=init, loss=loss, sample=sample, log_prob=None, init_model_state=init_model_state)
