"""Neural spline flow (Durkan et al. 2019) on the 2D checkerboard; set
model.coupling="affine" for RealNVP (Dinh et al. 2017)."""
from configs import base_flows


def get_config():
    config = base_flows.get_config("realnvp")
    config.model.coupling = "spline"
    config.model.hidden = (128, 128)
    config.lock()
    return config
