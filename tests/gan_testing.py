"""A tiny GAN config on ring8 shared by the GAN test files."""
from configs import gan_ring8


def tiny_gan_config(loss="wgan_gp", *, hidden=(32, 32), num_steps=20, steps_per_call=10,
                    checkpoint_every=20, **model):
    """configs/gan_ring8.py shrunk to a few seconds: both players `hidden` wide, batch 32;
    `model` overrides other model fields (n_critic, spectral_norm, ...)."""
    config = gan_ring8.get_config(loss)
    config.unlock()
    config.model.generator_hidden = hidden
    config.model.critic_hidden = hidden
    for name, value in model.items():
        config.model[name] = value
    config.data.batch_size = 32
    config.train.num_steps = num_steps
    config.train.steps_per_call = steps_per_call
    config.train.checkpoint_every = checkpoint_every
    config.sample.num = 200
    return config
