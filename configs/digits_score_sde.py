"""Continuous VP-SDE on the 8x8 digits, trained for likelihood (Song et al. 2021b):
likelihood-weighted DSM with importance-sampled times, small U-Net."""
from configs import base_digits


def get_config():
    config = base_digits.get_config()
    config.lock()
    return config
