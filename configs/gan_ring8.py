"""GAN on the ring of 8 Gaussians (radius 2, std 0.02) of the mode-collapse benchmarks
(configs/base_gan.py; docs/gan.md).

    python -m experiments.main --config=configs/gan_ring8.py[:wgan_gp|:non_saturating] \
        --workdir=runs/gan_ring8 --mode=all
    python -m experiments.gan_study --config=configs/gan_ring8.py --workdir=runs/gan_ring8_wgan_gp_study \
        --seeds=10 --strategy=vmap

WGAN-GP as measured in docs/gan.md: a 4 x 256 ReLU generator from a 2-D latent,
a 3 x 128 LeakyReLU critic, batch 256, lambda = 1, two critic updates per generator
update, Adam(b1 = 0, b2 = 0.9) at 4e-3 with cosine decay for both players, 4000
generator steps, generator EMA 0.99. The non-saturating GAN uses the same networks
and steps, one discriminator update per generator update and Adam(0.5, 0.9) at 1e-3.
"""
from configs import base_gan


def get_config(loss: str = "wgan_gp"):
    return base_gan.mixture_config("ring8", loss, num_steps=4_000)
