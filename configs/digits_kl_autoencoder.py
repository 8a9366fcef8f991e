"""KL-regularized autoencoder on the 8x8 digits: the first stage of latent diffusion
(Rombach et al. 2022, sec. 3 and App. G: a VAE whose KL term has a small weight).

    python -m experiments.main --config=configs/digits_kl_autoencoder.py --workdir=runs/digits_kl_ae

The VAE family of configs/digits_vae.py (Gaussian q(z|x), 17-way categorical
decoder) with model.kl_weight = 1e-3 instead of 1: the reconstruction term
dominates, so the 16-dimensional latent keeps nearly all of the image (sharp
reconstructions), and the KL term only keeps q(z|x) near a standard normal in
scale. configs/digits_latent_diffusion.py trains a diffusion model on its latents
(docs/latent_diffusion.md).
"""
from configs import digits_vae


def get_config():
    c = digits_vae.get_config()
    c.unlock()
    c.model.kl_weight = 1e-3            # beta of the KL term (Rombach et al. 2022 use ~1e-6 on images)
    c.train.num_steps = 6_000
    c.train.checkpoint_every = 2_000
    c.eval.num_importance_samples = 100
    c.eval.iwae_num_samples = (1, 100)
    c.lock()
    return c
