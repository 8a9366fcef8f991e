"""Class-conditional latent diffusion on the 8x8 digits (Rombach et al. 2022) with
classifier-free guidance (Ho & Salimans 2021): a score SDE (Song et al. 2021) on the
16-dimensional latents of the KL autoencoder of configs/digits_kl_autoencoder.py.

    python -m experiments.main --config=configs/digits_kl_autoencoder.py --workdir=runs/digits_kl_ae
    python -m experiments.main --config=configs/digits_latent_diffusion.py --workdir=runs/digits_ldm

The latents are z ~ q(z|x) drawn afresh every step (model.latents), divided by one
scale s computed from the training latents; samples are decoded to the most
probable level of each pixel (sample.decode). The NLL is an upper bound on -log P(x)
of the discrete test images: -(E_q log p(x|z) + E_q log p_diff(z) + H[q(z|x)]), with
log p_diff from the probability-flow ODE (docs/latent_diffusion.md).
"""
from configs import base_digits


def get_config():
    c = base_digits.get_config()
    c.family = "latent_diffusion"
    m = c.model
    m.autoencoder_workdir = "runs/digits_kl_ae"   # a finished vae run (configs/digits_kl_autoencoder.py)
    m.latent_dim = 16                   # must equal the autoencoder's model.latent_dim
    m.latents = "sample"                # sample: z ~ q(z|x) afresh every step | mean: z = mean of q(z|x)
    m.diffusion = "score_sde"           # the diffusion objective on the latents: score_sde (DSM) | ddpm
    m.conditional = True
    m.label_dropout = 0.1
    m.net = "mlp"                       # the latents are vectors: TimeMLP
    m.hidden = (256, 256, 256)
    c.train.num_steps = 3_000
    c.sample.guidance = 1.0             # as configs/digits_cfg.py; same sampler (dpm_solver, 20 steps)
    c.sample.decode = "mode"            # mode: most probable level of p(x|z) | sample: x ~ p(x|z)
    c.eval.exact_divergence = True      # 16 dimensions: the exact trace costs 16 JVPs
    c.eval.num_latent_samples = 1       # draws z ~ q(z|x) per image of the bound's expectations
    c.lock()
    return c
