"""Class-conditional DDPM on the 8x8 digits with classifier-free guidance
(Ho et al. 2020; Nichol & Dhariwal 2021 cosine schedule; v-prediction, Salimans & Ho 2022;
Ho & Salimans 2021):
labels dropped with probability 0.1 during training, guidance weight w at sampling."""
from configs import base_digits


def get_config():
    config = base_digits.get_config()
    config.family = "ddpm"
    config.model.sde = "ddpm_cosine"
    config.model.prediction = "v"  # eps blows up x0 = (x - sigma eps)/alpha where alpha(1) ~ 5e-5
    config.model.conditional = True
    config.model.label_dropout = 0.1
    config.train.num_steps = 3_000
    config.sample.guidance = 1.0
    config.lock()
    return config
