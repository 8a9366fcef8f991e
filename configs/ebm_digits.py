"""Energy-based model on the 8x8 digits in [-1, 1] (configs/base_ebm.py; docs/ebm.md):
a convolutional energy trained by contrastive divergence with short-run SGLD chains
from a persistent replay buffer (Du & Mordatch 2019); samples are fresh short-run
chains from uniform noise. No likelihood: quadrature of Z needs 2-D data, so the
evaluation reports the digits classifier's Fréchet distance."""
from configs import base_ebm


def get_config(objective: str = "cd"):
    if objective != "cd":
        raise ValueError(f"the digits EBM config trains by contrastive divergence; got objective {objective!r}")
    config = base_ebm.get_config("digits", objective)
    config.data.batch_size = 64
    config.model.net = "conv"
    config.model.objective = "cd"
    config.model.buffer_size = 10_000
    # Half the chains restart from uniform noise each update (Du & Mordatch: 5%): the
    # samples are fresh short-run chains from noise, so training must see many of
    # them (Nijkamp et al. 2019 train on such chains only). In 2000-step tuning runs
    # 5% gave a Fréchet distance of 96 and 20% gave 57 (100-step sampling chains).
    config.model.reinit_prob = 0.5
    config.model.sgld_steps = 20
    # Du & Mordatch's decoupled step and noise: a large step on a small, regularised
    # energy, noise far below sqrt(2 h), i.e. a cold chain
    config.model.sgld_step_size = 10.0
    config.model.sgld_noise = 0.01
    config.model.alpha = 1.0
    config.optim.learning_rate = 1e-3
    config.optim.b1 = 0.0               # no momentum: the energy follows the latest chains
    config.train.num_steps = 4_000
    config.train.steps_per_call = 100
    config.train.checkpoint_every = 1_000
    config.sample.num = 500
    config.sample.method = "sgld"
    config.sample.num_steps = 40        # twice the training chains; much longer runs over-saturate
    config.sample.step_size = 10.0
    config.sample.noise_scale = 0.01
    config.lock()
    return config
