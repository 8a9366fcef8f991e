"""Flow matching (Lipman et al. 2023; conditional OT path) on the 8x8 digits with the
diffusion configs' small U-Net as the velocity field; test NLL of the discrete data
through the ODE likelihood (Hutchinson divergence)."""
from configs import base_digits_flows


def get_config():
    config = base_digits_flows.get_config("flow_matching")
    config.train.num_steps = 6_000
    config.lock()
    return config
