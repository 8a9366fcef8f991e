"""Multi-scale Glow (Kingma & Dhariwal 2018) on the 8x8 digits, trained by exact
maximum likelihood of the dequantized images; test NLL of the discrete data."""
from configs import base_digits_flows


def get_config():
    config = base_digits_flows.get_config("glow")
    config.lock()
    return config
