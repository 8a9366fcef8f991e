"""FFJORD continuous normalizing flow on the 2D checkerboard (Grathwohl et al. 2019),
trained by maximum likelihood through an 8-step RK4 solve."""
from configs import base_flows


def get_config():
    config = base_flows.get_config("cnf")
    config.model.hidden = (64, 64, 64)
    config.data.batch_size = 512
    config.train.num_steps = 3_000
    config.train.checkpoint_every = 1_000
    config.lock()
    return config
