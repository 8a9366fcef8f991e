"""Flow matching on the conditional OT path on the 2D checkerboard (Lipman et al. 2023)."""
from configs import base_flows


def get_config():
    config = base_flows.get_config("flow_matching")
    config.lock()
    return config
