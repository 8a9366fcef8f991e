"""The explicit choices a config can name, and the builders that unpack a config
into keyword arguments for `genjax` (no config object goes into genjax/)."""
import jax

from genjax.data import toy2d
from genjax.diffusion import model as diffusion_model
from genjax.diffusion import sde as sde_lib
from genjax.nn.mlp import TimeMLP

TOY_DENSITIES = {
    "checkerboard": toy2d.checkerboard,
    "eight_gaussians": toy2d.eight_gaussians,
    "rings": toy2d.rings,
    "pinwheel": toy2d.pinwheel,
    "two_moons": toy2d.two_moons,
    "swiss_roll": toy2d.swiss_roll,
}

SDES = {
    "vp": lambda m: sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max),
    "subvp": lambda m: sde_lib.SubVPSDE(beta_min=m.beta_min, beta_max=m.beta_max),
    "ve": lambda m: sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max),
}


def choose(kind: str, name: str, table: dict):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
    return table[name]


def build_density(config):
    return choose("dataset", config.data.name, TOY_DENSITIES)()


def build_sde(config):
    return choose("sde", config.model.sde, SDES)(config.model)


def build_score_model(config, data_shape=(2,)):
    net = TimeMLP(hidden=tuple(config.model.hidden), time_embedding=config.model.time_embedding)
    return diffusion_model.make_score_model(
        build_sde(config), net, data_shape=data_shape,
        likelihood_weighting=config.model.likelihood_weighting,
        importance_sampling=config.model.importance_sampling,
        train_eps=config.model.train_eps,
    )


def toy_batch_fn(density, batch_size: int):
    """Batch of step s: fresh exact samples drawn from fold_in(data_key, s)."""

    def batch_fn(data_key, step):
        return density.sample(jax.random.fold_in(data_key, step), batch_size)

    return batch_fn


FAMILIES = {"score_sde": build_score_model}
