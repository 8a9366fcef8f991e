"""The explicit choices a config can name, and the builders that unpack a config
into keyword arguments for `genjax` (no config object goes into genjax/)."""
from experiments.sources import TOY_DENSITIES, build_source  # noqa: F401  (re-exported)
from genjax.diffusion import ddpm
from genjax.diffusion import model as diffusion_model
from genjax.diffusion import sde as sde_lib
from genjax.nn.mlp import TimeMLP
from genjax.nn.unet import UNet

SDES = {
    "vp": lambda m: sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max),
    "subvp": lambda m: sde_lib.SubVPSDE(beta_min=m.beta_min, beta_max=m.beta_max),
    "ve": lambda m: sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max),
    "ddpm_linear": lambda m: ddpm.DiscreteVPSDE(ddpm.make_schedule("linear", m.num_timesteps)),
    "ddpm_cosine": lambda m: ddpm.DiscreteVPSDE(ddpm.make_schedule("cosine", m.num_timesteps)),
}

NETS = {
    "mlp": lambda m, num_classes: TimeMLP(
        hidden=tuple(m.hidden), time_embedding=m.time_embedding, num_classes=num_classes),
    "unet": lambda m, num_classes: UNet(
        channels=tuple(m.channels), num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions), dropout=m.dropout,
        num_classes=num_classes),
}



def choose(kind: str, name: str, table: dict):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
    return table[name]


def build_sde(config):
    return choose("sde", config.model.sde, SDES)(config.model)


DIFFUSION_OBJECTIVES = {"score_sde": "dsm", "ddpm": "ddpm"}


def build_diffusion_model(config, source):
    """Score-SDE (continuous DSM) or DDPM (discrete L_simple) model for `source`'s data."""
    m = config.model
    objective = DIFFUSION_OBJECTIVES[config.family]
    net = choose("net", m.get("net", "mlp"), NETS)(m, source.num_classes)
    sde = build_sde(config)
    if objective == "ddpm" and not hasattr(sde, "num_timesteps"):
        raise ValueError(f"family 'ddpm' trains on a discrete schedule; model.sde={m.sde!r} "
                         "is continuous (use ddpm_linear or ddpm_cosine)")
    return diffusion_model.make_diffusion_model(
        sde, net, data_shape=source.data_shape, objective=objective,
        prediction=m.get("prediction", "eps"),
        likelihood_weighting=m.get("likelihood_weighting", False),
        importance_sampling=m.get("importance_sampling", False),
        train_eps=m.get("train_eps", 1e-5), num_classes=source.num_classes,
        label_dropout=m.get("label_dropout", 0.1))


# config.family -> builder(config, source) -> genjax.core.Model
FAMILIES = {"score_sde": build_diffusion_model, "ddpm": build_diffusion_model}


def build_model(config, source):
    """The genjax Model a config names, for data from `source`."""
    return choose("family", config.family, FAMILIES)(config, source)
