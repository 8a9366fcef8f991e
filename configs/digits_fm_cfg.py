"""Class-conditional flow matching on the 8x8 digits with classifier-free guidance
(Ho & Salimans 2021; guided flows, Zheng et al. 2023): labels dropped with
probability 0.1 during training, guided velocity (1 + w) v(x, t, c) - w v(x, t, null)
at sampling, through the guidance code the diffusion models use."""
from configs import base_digits_flows


def get_config():
    config = base_digits_flows.get_config("flow_matching")
    config.model.conditional = True
    config.train.num_steps = 2_000
    config.sample.method = "midpoint"   # fixed cost per sample, the same for every w
    config.sample.num_steps = 20
    config.sample.guidance = 1.0
    config.lock()
    return config
