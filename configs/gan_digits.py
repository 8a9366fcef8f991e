"""GAN on the 8x8 digits in [-1, 1] (configs/base_gan.py; docs/gan.md): a DCGAN-style
convolutional generator and critic (genjax.gan.nets.ConvGenerator / ConvCritic,
width 32). No likelihood: the evaluation reports the digits classifier's Fréchet
distance to the test split and the class coverage of the samples.

    python -m experiments.main --config=configs/gan_digits.py[:hinge|:wgan_gp] \
        --workdir=runs/gan_digits --mode=all

hinge (default): the SN-GAN recipe, hinge loss with a spectrally normalized critic
(Miyato et al. 2018), one critic update per generator update and the two-timescale
Adam(0, 0.9) of Zhang et al. 2019 (SAGAN), 4e-4 for the critic and 2e-4 for the
generator (their 1e-4 for 6k steps gave FD 45.0 on 500 samples; 2e-4 for 12k, 24.4). No
input-gradient penalty: on the CPU the double backward pass through the
convolutions makes a WGAN-GP critic update 3x the cost of an SN one (31 against
10 ms at width 32, batch 64), and WGAN-GP takes 5 of them per generator update.
wgan_gp: the paper's settings, lambda = 10, n_critic = 5, Adam(0.5, 0.9) at 1e-4.
"""
from configs import base_gan


def get_config(loss: str = "hinge"):
    config = base_gan.get_config("digits", loss)
    config.data.batch_size = 64
    config.model.net = "conv"
    config.model.width = 32
    config.model.latent_dim = 32
    if loss == "wgan_gp":
        base_gan.set_both(config, learning_rate=1e-4)
    else:
        config.model.spectral_norm = True
        base_gan.set_both(config, b1=0.0)
        config.optim.critic.learning_rate = 4e-4
        config.optim.generator.learning_rate = 2e-4
    config.optim.ema_decay = 0.999
    config.train.num_steps = 12_000
    config.train.steps_per_call = 100
    config.train.checkpoint_every = 4_000
    config.sample.num = 500
    config.lock()
    return config
