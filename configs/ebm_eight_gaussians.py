"""Energy-based model on the 2-D eight_gaussians (configs/base_ebm.py; docs/ebm.md)."""
from configs import base_ebm


def get_config():
    config = base_ebm.get_config("eight_gaussians")
    config.lock()
    return config
