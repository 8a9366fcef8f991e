"""A deliberately over-trained diffusion model: the score SDE of
configs/digits_score_sde.py on only the first 100 training digits, without dropout,
for 12,000 steps (about 7,700 passes over its data), so that its samples are
near-copies of training images: the positive control of the memorization probe
(`genjax.metrics.memorization`; Carlini et al. 2023) in `python -m experiments.compare`."""
from configs import base_digits


def get_config():
    config = base_digits.get_config()
    config.data.train_size = 100        # the first 100 images of the train split
    config.model.dropout = 0.0
    config.train.num_steps = 12_000
    config.train.checkpoint_every = 2_000
    config.lock()
    return config
