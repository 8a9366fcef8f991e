"""GAN on the 8x8 digits in [-1, 1] (configs/base_gan.py; docs/gan.md): a DCGAN-style
convolutional generator and critic (genjax.gan.nets.ConvGenerator / ConvCritic),
WGAN-GP with the paper's lambda = 10 and n_critic = 5 (Gulrajani et al. 2017).
No likelihood: the evaluation reports the digits classifier's Fréchet distance to
the test split and the class coverage of the samples.

    python -m experiments.main --config=configs/gan_digits.py --workdir=runs/gan_digits --mode=all
"""
from configs import base_gan


def get_config(loss: str = "wgan_gp"):
    config = base_gan.get_config("digits", loss)
    config.data.batch_size = 64
    config.model.net = "conv"
    config.model.width = 64
    config.model.latent_dim = 32
    base_gan.set_both(config, learning_rate=2e-4, b1=0.0)
    config.optim.ema_decay = 0.999
    config.train.num_steps = 3_000
    config.train.steps_per_call = 100
    config.train.checkpoint_every = 1_000
    config.sample.num = 500
    config.lock()
    return config
