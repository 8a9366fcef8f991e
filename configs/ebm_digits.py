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
    config.data.batch_size = 128
    config.model.net = "conv"
    config.model.objective = "cd"
    config.model.buffer_size = 10_000
    config.model.reinit_prob = 0.05     # Du & Mordatch's rate: keeps noise-started chains in training
    config.model.sgld_steps = 40
    config.model.sgld_step_size = 1.0
    config.model.sgld_noise = 0.01
    config.model.alpha = 1.0
    config.optim.learning_rate = 1e-4
    config.optim.b1 = 0.0               # Du & Mordatch: Adam without momentum (beta1 = 0)
    config.train.num_steps = 4_000
    config.train.steps_per_call = 100
    config.train.checkpoint_every = 1_000
    config.sample.num = 500
    config.sample.method = "sgld"
    config.sample.num_steps = 100
    config.sample.step_size = 1.0
    config.sample.noise_scale = 0.01
    config.lock()
    return config
