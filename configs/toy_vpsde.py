"""VP-SDE score model on the 2D checkerboard (Song et al. 2021)."""
from configs import base_score_sde


def get_config():
    config = base_score_sde.get_config()
    config.model.sde = "vp"
    config.lock()
    return config
