"""The explicit choices a config can name, and the builders that unpack a config
into keyword arguments for `genjax` (no config object goes into genjax/).

`FAMILIES` holds one `Family` entry per model family: everything the glue (the run
loop, sampling, evaluation, ablations) must know about it, so no script tests a
family's or a network's name.
"""
from typing import Callable, NamedTuple

import jax

from experiments.configuration import ConfigError
from experiments.sources import TOY_DENSITIES, build_source  # noqa: F401  (re-exported)
from experiments import latent_diffusion, text_source
from genjax.data import images as images_lib
from genjax.diffusion import ddpm
from genjax.ebm import model as ebm_lib
from genjax.ebm import nets as ebm_nets
from genjax.ebm import partition as ebm_partition
from genjax.diffusion import model as diffusion_model
from genjax.diffusion import sde as sde_lib
from genjax.flows import cnf as cnf_lib
from genjax.flows import matching as matching_lib
from genjax.flows import paths as paths_lib
from genjax.flows import realnvp as realnvp_lib
from genjax.gan import model as gan_lib
from genjax.gan import nets as gan_nets
from genjax.autoregressive import pixelcnn as pixelcnn_lib
from genjax.nn.mlp import TimeMLP
from genjax.nn.pixelcnn import PixelCNN
from genjax.nn.unet import UNet
from genjax.vae import model as vae_lib
from genjax.vae import nets as vae_nets
from genjax.vae import vqvae as vqvae_lib

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
CONVOLUTIONAL_NETS = ("unet",)


def net_is_convolutional(config) -> bool:
    return config.model.get("net", "mlp") in CONVOLUTIONAL_NETS



def choose(kind: str, name: str, table: dict):
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
    return table[name]


def build_sde(config):
    return choose("sde", config.model.sde, SDES)(config.model)


def build_sde_and_net(config, source):
    """The diffusion SDE and network a config names, for `source`'s data."""
    net = choose("net", config.model.get("net", "mlp"), NETS)(config.model, source.num_classes)
    return build_sde(config), net


DIFFUSION_OBJECTIVES = {"score_sde": "dsm", "ddpm": "ddpm"}


def build_diffusion_model(config, source, objective=None):
    """Score-SDE (continuous DSM) or DDPM (discrete L_simple) model for `source`'s data;
    `objective` ("dsm" | "ddpm") defaults to the one of config.family."""
    m = config.model
    objective = DIFFUSION_OBJECTIVES[config.family] if objective is None else objective
    sde, net = build_sde_and_net(config, source)
    if objective == "ddpm" and not hasattr(sde, "num_timesteps"):
        raise ConfigError(f"family 'ddpm' trains on a discrete schedule; model.sde={m.sde!r} "
                         "is continuous (use ddpm_linear or ddpm_cosine)")
    return diffusion_model.make_diffusion_model(
        sde, net, data_shape=source.data_shape, objective=objective,
        prediction=m.get("prediction", "eps"),
        likelihood_weighting=m.get("likelihood_weighting", False),
        importance_sampling=m.get("importance_sampling", False),
        train_eps=m.get("train_eps", 1e-5), num_classes=source.num_classes,
        label_dropout=m.get("label_dropout", 0.1))


def _vector_field_net(config, source):
    """TimeMLP v(x, t) for the ODE families (unconditional: labels are not used)."""
    if source.num_classes is not None:
        raise ConfigError(f"family {config.family!r} is unconditional; "
                         "set model.conditional=False for this dataset")
    m = config.model
    return TimeMLP(hidden=tuple(m.hidden), time_embedding=m.time_embedding)


def build_flow_matching_model(config, source):
    """Flow matching on the conditional OT path (Lipman et al. 2023), optionally with
    mini-batch OT pairing of noise and data (Tong et al. 2023). The velocity net is
    model.net (mlp | unet); class-conditional with label dropout and classifier-free
    guidance when the source has classes (model.conditional on images)."""
    m = config.model
    net = choose("net", m.get("net", "mlp"), NETS)(m, source.num_classes)
    return matching_lib.make_flow_matching_model(
        net, data_shape=source.data_shape,
        path=paths_lib.cond_ot_path(m.sigma_min),
        ot_coupling=m.ot_coupling, num_classes=source.num_classes,
        label_dropout=m.get("label_dropout", 0.1))


def build_cnf_model(config, source):
    """FFJORD continuous normalizing flow trained by maximum likelihood through a
    fixed-step solver; sample/log_prob use the adaptive solver at config.eval's tolerances."""
    m, ec = config.model, config.eval
    return cnf_lib.make_cnf_model(
        _vector_field_net(config, source), data_shape=source.data_shape,
        exact_divergence=m.exact_divergence, train_method=m.train_method,
        train_num_steps=m.train_num_steps, rtol=ec.rtol, atol=ec.atol,
        kinetic_weight=m.kinetic_weight, jacobian_weight=m.jacobian_weight)


def build_realnvp_model(config, source):
    """RealNVP (affine coupling) or neural spline flow (model.coupling="spline")."""
    if source.num_classes is not None:
        raise ConfigError("family 'realnvp' is unconditional; set model.conditional=False")
    m = config.model
    return realnvp_lib.make_realnvp_model(
        data_shape=source.data_shape, num_layers=m.num_layers, hidden=tuple(m.hidden),
        coupling=m.coupling, mixing=m.mixing, num_bins=m.num_bins, bound=m.bound,
        log_scale_bound=m.log_scale_bound, seed=config.seed)


def build_glow_model(config, source):
    """Multi-scale Glow (Kingma & Dhariwal 2018) on images in [-1, 1]: rescaled to
    [0, 1] and logit-transformed inside the flow (model.logit_alpha; None models
    [-1, 1] directly), so log_prob is the density of the dequantized images in
    model space (the convention of the diffusion NLL)."""
    if source.num_classes is not None:
        raise ConfigError("family 'glow' is unconditional; set model.conditional=False")
    if len(source.data_shape) != 3:
        raise ConfigError(f"family 'glow' models images (H, W, C); data {config.data.name!r} "
                         f"has shape {source.data_shape}")
    m = config.model
    return realnvp_lib.make_glow_model(
        data_shape=source.data_shape, num_scales=m.num_scales, steps_per_scale=m.steps_per_scale,
        hidden=tuple(m.hidden), log_scale_bound=m.log_scale_bound, logit_alpha=m.logit_alpha,
        data_range=None if m.logit_alpha is None else (-1.0, 1.0))


EBM_NETS = {
    "mlp": lambda m: ebm_nets.EnergyMLP(hidden=tuple(m.hidden), activation=m.activation),
    "conv": lambda m: ebm_nets.ConvEnergy(channels=tuple(m.channels), dense=m.dense, activation=m.activation),
}


def build_ebm_model(config, source):
    """An energy-based model p = exp(-E)/Z on the box model.box, trained by
    model.objective (cd | ssm | dsm); the likelihood is quadrature of Z on 2-D data."""
    if source.num_classes is not None:
        raise ConfigError("family 'ebm' is unconditional; set model.conditional=False")
    m = config.model
    return ebm_lib.make_ebm_model(
        choose("energy net", m.net, EBM_NETS)(m), data_shape=source.data_shape, box=tuple(m.box),
        objective=m.objective, buffer_size=m.buffer_size, reinit_prob=m.reinit_prob,
        sgld_steps=m.sgld_steps, sgld_step_size=m.sgld_step_size, sgld_noise=m.sgld_noise,
        clip_grad=m.clip_grad, alpha=m.alpha, num_projections=m.num_projections,
        variance_reduced=m.variance_reduced, sigma=m.sigma, sampler=config.sample.method,
        sample_steps=config.sample.num_steps, sample_step_size=config.sample.step_size,
        quadrature_resolution=config.eval.resolution)


def ebm_likelihood_note(config, source):
    return ebm_partition.quadrature_note(source.data_shape)


def ebm_net_is_convolutional(config) -> bool:
    return config.model.net == "conv"


# GAN networks: net -> (generator of data_shape, critic)
GAN_NETS = {
    "mlp": (lambda m, shape: gan_nets.MLPGenerator(out_dim=shape[0], hidden=tuple(m.generator_hidden)),
            lambda m: gan_nets.MLPCritic(hidden=tuple(m.critic_hidden), negative_slope=m.negative_slope)),
    "conv": (lambda m, shape: gan_nets.ConvGenerator(image_shape=shape, width=m.width),
             lambda m: gan_nets.ConvCritic(width=m.width, negative_slope=m.negative_slope)),
}


def build_gan_model(config, source):
    """A GAN (generator and critic from model.net; model.loss wgan_gp | non_saturating
    | hinge, gradient / R1 penalties, n_critic, spectral normalization). Optimizers
    per group: config.optim.generator and config.optim.critic."""
    if source.num_classes is not None:
        raise ConfigError("family 'gan' is unconditional; set model.conditional=False")
    m = config.model
    make_generator, make_critic = choose("GAN net", m.net, GAN_NETS)
    return gan_lib.make_gan_model(
        make_generator(m, source.data_shape), make_critic(m), data_shape=source.data_shape,
        latent_dim=m.latent_dim, loss=m.loss, gp_weight=m.gp_weight, r1_weight=m.r1_weight,
        n_critic=m.n_critic, spectral_norm=m.spectral_norm)


def gan_net_is_convolutional(config) -> bool:
    return config.model.net == "conv"


def _discrete_images(config, source):
    """(data_shape, num_levels) of a source of discrete images; ConfigError otherwise."""
    if source.num_classes is not None:
        raise ConfigError(f"family {config.family!r} is unconditional; set model.conditional=False")
    num_levels = getattr(source, "num_levels", None)
    if num_levels is None or len(source.data_shape) != 3:
        raise ConfigError(f"family {config.family!r} models discrete images (H, W, C); data "
                         f"{config.data.name!r} has shape {source.data_shape} and no grey levels")
    try:
        vae_nets.check_divisible(source.data_shape, config.model.channels)
    except ValueError as err:
        raise ConfigError(f"model.channels={tuple(config.model.channels)}: {err}") from None
    return tuple(source.data_shape), num_levels


def build_vae(config, source) -> vae_lib.VAE:
    """The VAE's networks (genjax.vae.model.VAE) a config names: for the VAE family
    and for code that reuses a trained VAE's encode / decode (latent diffusion)."""
    data_shape, num_levels = _discrete_images(config, source)
    m = config.model
    channels = tuple(m.channels)
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout!r}; expected a number in [0, 1)")
    return vae_lib.VAE(
        encoder=vae_nets.GaussianEncoder(latent_dim=m.latent_dim, channels=channels, hidden=m.hidden,
                                         dropout_rate=m.dropout),
        decoder=vae_nets.LatentDecoder(image_shape=data_shape, num_levels=num_levels, channels=channels,
                                       hidden=m.hidden, dropout_rate=m.dropout),
        data_shape=data_shape, num_levels=num_levels, latent_dim=m.latent_dim)


def build_vae_model(config, source):
    """Gaussian VAE with a categorical decoder (docs/vae.md): negative ELBO with KL
    weight model.kl_weight and model.free_bits; log_prob the IWAE bound with
    eval.num_importance_samples samples."""
    try:
        return vae_lib.make_vae_model(
            build_vae(config, source), kl_weight=config.model.kl_weight, free_bits=config.model.free_bits,
            num_importance_samples=config.eval.num_importance_samples,
            importance_chunk_size=config.eval.importance_chunk_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def vae_evaluations(config, source, model, params, model_kwargs, progress, reported):
    """The importance-weighted bound for each k of eval.iwae_num_samples on the
    eval split: {"iwae_bounds": {"k=1": {...}, ...}}, each a lower bound on
    log P(x) reported as the upper bound -L_k on the NLL (nats per image). The k of
    the headline (eval.num_importance_samples) is taken from `reported` (the same
    images and keys), not computed twice."""
    ec = config.eval
    ks = tuple(ec.iwae_num_samples)
    bad = [k for k in ks if not (isinstance(k, int) and k >= 1)]
    if bad:
        raise ConfigError(f"eval.iwae_num_samples={ks!r}; expected positive integers (e.g. (1, 10, 100, 1000))")
    bounds = {}
    for k in ks:
        if k == ec.num_importance_samples and "nll_nats" in reported:
            bounds[f"k={k}"] = {"nll_upper_bound_nats": reported["nll_nats"], "stderr": reported["nll_stderr"],
                                "num_eval": reported["num_eval"]}
            continue
        nll = source.discrete_nll(model, params, ec.split, num=ec.num or None, batch_size=ec.batch_size,
                                  progress=progress, num_importance_samples=k,
                                  importance_chunk_size=ec.importance_chunk_size, **model_kwargs)
        bounds[f"k={k}"] = {"nll_upper_bound_nats": float(nll.mean()),
                            "stderr": float(nll.std() / max(len(nll), 1) ** 0.5), "num_eval": int(len(nll))}
    return {"iwae_bounds": bounds,
            "iwae_note": "importance-weighted bounds (Burda et al. 2016): -L_k >= -log P(x), nats per "
                         "image of the discrete data; nll_nats is -L_k at k = eval.num_importance_samples"}


def build_vqvae_model(config, source):
    """VQ-VAE (van den Oord et al. 2017, docs/vae.md): codebook of model.codebook_size
    codes of model.code_dim, straight-through estimator, commitment weight
    model.commitment_weight, EMA codebook (model.codebook_decay) as model state. No
    likelihood (no prior over codes is trained)."""
    data_shape, num_levels = _discrete_images(config, source)
    m = config.model
    channels = tuple(m.channels)
    try:
        return vqvae_lib.make_vqvae_model(
            vae_nets.GridEncoder(code_dim=m.code_dim, channels=channels),
            vae_nets.GridDecoder(image_channels=data_shape[-1], num_levels=num_levels, channels=channels),
            data_shape=data_shape, num_levels=num_levels, codebook_size=m.codebook_size, code_dim=m.code_dim,
            commitment_weight=m.commitment_weight, codebook_decay=m.codebook_decay)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def vqvae_evaluations(config, source, model, params, model_kwargs, progress, reported):
    """Reconstruction error and codebook perplexity on the eval split (one pass of
    the loss over it; the returned codebook state is discarded)."""
    del progress, reported
    ec = config.eval
    x_int, _ = source.load_split(ec.split)
    y, _ = images_lib.to_model_space(jax.random.PRNGKey(5), x_int[: ec.num or None], source.num_levels)
    _, (metrics, _) = jax.jit(model.loss)(params, jax.random.PRNGKey(1), y, model_kwargs["model_state"])
    return {f"{ec.split}_{name}": float(value) for name, value in metrics.items()}


def build_pixelcnn_net(config, source) -> PixelCNN:
    """The Gated PixelCNN network a config names, for `source`'s images (checked: integer
    levels, one channel, model.num_levels equal to the data's levels)."""
    m = config.model
    data_levels = getattr(source, "num_levels", None)
    if data_levels is None or len(source.data_shape) != 3:
        raise ConfigError(f"family 'pixelcnn' models images (H, W, C) of integer levels; data "
                         f"{config.data.name!r} has shape {source.data_shape}")
    if data_levels != m.num_levels:
        raise ConfigError(f"family 'pixelcnn': model.num_levels={m.num_levels} output levels per pixel, "
                         f"but data {config.data.name!r} has {data_levels} levels; set "
                         f"model.num_levels={data_levels}")
    if source.data_shape[-1] != 1:
        raise ConfigError(f"family 'pixelcnn' models one-channel images; data {config.data.name!r} has "
                         f"shape {source.data_shape} (C = {source.data_shape[-1]})")
    return PixelCNN(num_levels=m.num_levels, channels=m.channels, num_layers=m.num_layers,
                    kernel=m.kernel, first_kernel=m.first_kernel, head=m.head,
                    num_classes=source.num_classes, dropout=m.dropout)


def build_pixelcnn_model(config, source):
    """Gated PixelCNN (van den Oord et al. 2016) on integer images: exact NLL of the
    model.num_levels levels per pixel; class-conditional with label dropout (CFG)
    when the source has classes (model.conditional)."""
    net = build_pixelcnn_net(config, source)
    return pixelcnn_lib.make_pixelcnn_model(
        net, data_shape=source.data_shape, num_levels=net.num_levels, num_classes=source.num_classes,
        label_dropout=config.model.label_dropout)


# the config.sample fields each sampler reads (besides method, guidance and labels)
DIFFUSION_SAMPLERS = {
    "pc": ("num_steps", "predictor", "corrector", "snr", "eps"),
    "ode": ("eps",),
    "ddim": ("num_steps", "eta", "eps", "discretization"),
    "dpm_solver": ("num_steps", "order", "eps", "discretization"),
    "edm_heun": ("num_steps", "eps", "discretization"),
    "ancestral": ("num_steps",),
}
# latent diffusion: the diffusion samplers on the latents, then decode = mode | sample
LATENT_DIFFUSION_SAMPLERS = {name: fields + ("decode",) for name, fields in DIFFUSION_SAMPLERS.items()}
# energy-based models: chains from noise on exp(-E)
EBM_SAMPLERS = {
    "mala": ("num_steps", "step_size"),
    "sgld": ("num_steps", "step_size", "noise_scale"),
}
# ODE flows (flow matching, CNF): Tsit5 or a fixed-step solver
ODE_SAMPLERS = {
    "adaptive": ("rtol", "atol"),
    "euler": ("num_steps",),
    "midpoint": ("num_steps",),
    "heun": ("num_steps",),
    "rk4": ("num_steps",),
}


def _never(config) -> bool:
    return False


def _always(config) -> bool:
    return True


def _no_note(config, source) -> None:
    return None


def _no_evaluations(config, source, model, params, model_kwargs, progress, reported) -> dict:
    return {}


class Family(NamedTuple):
    """What the glue knows about a model family.

    build:           (config, source) -> genjax.core.Model
    samplers:        sampler name -> the config.sample fields it reads; `model.sample`
                     gets method=<name> only when there is more than one
    log_prob_fields: the config.eval fields `model.log_prob` takes as keywords; None
                     when the family has no likelihood (evaluation then reports the
                     source's sample metrics only)
    convolutional:   config -> True when the network is convolutional: with
                     train.host_loop = "auto" such runs step from Python on CPU
                     (XLA:CPU runs convolution gradients inside loops slowly)
    source:          config -> data source, when the family reads its own kind of
                     data (the LM's byte streams); None: `sources.build_source`
    likelihood_note: (config, source) -> None, or why this family has no likelihood
                     on this data (an EBM's quadrature of Z needs 2-D points): the
                     evaluation then records the note and reports sample metrics only
    evaluations:     (config, source, model, params, model_kwargs, progress, reported)
                     -> more results for eval.json (a VAE's bounds at several k, a
                     VQ-VAE's reconstruction error and codebook perplexity);
                     `reported` is the source's evaluation, already computed
    nll_kind:        what the test NLL of `model.log_prob` is, for the family table
                     (experiments.compare): "exact" (change of variables, an
                     autoregressive product), "ode" (the density of an ODE flow: exact
                     up to the solver's tolerance, with an unbiased trace estimate,
                     Grathwohl et al. 2019, eq. 7, unless eval.exact_divergence) or
                     "bound" (a lower bound on log p: the ELBO, the IWAE bound)
    """

    build: Callable
    samplers: dict
    log_prob_fields: tuple | None = ()
    convolutional: Callable = _never
    source: Callable | None = None
    likelihood_note: Callable = _no_note
    evaluations: Callable = _no_evaluations
    nll_kind: str = "exact"


# config.family -> Family
FAMILIES = {
    "score_sde": Family(build_diffusion_model, DIFFUSION_SAMPLERS,
                        ("exact_divergence", "rtol", "atol", "eps"), net_is_convolutional, nll_kind="ode"),
    "ddpm": Family(build_diffusion_model, DIFFUSION_SAMPLERS,
                   ("exact_divergence", "rtol", "atol", "eps"), net_is_convolutional, nll_kind="ode"),
    # a lower bound: the ELBO with the probability-flow ODE density of the latents as prior
    "latent_diffusion": Family(latent_diffusion.build_latent_diffusion_model, LATENT_DIFFUSION_SAMPLERS,
                               ("exact_divergence", "rtol", "atol", "eps", "num_latent_samples"),
                               source=latent_diffusion.LatentSource,
                               evaluations=latent_diffusion.latent_diffusion_evaluations, nll_kind="bound"),
    "flow_matching": Family(build_flow_matching_model, ODE_SAMPLERS,
                            ("exact_divergence", "rtol", "atol"), net_is_convolutional, nll_kind="ode"),
    "cnf": Family(build_cnf_model, ODE_SAMPLERS, ("exact_divergence", "rtol", "atol"),
                  nll_kind="ode"),
    # exact flows: x = F^{-1}(T z); the log-density is exact and solver-free
    "realnvp": Family(build_realnvp_model, {"inverse": ("temperature",)}),
    "glow": Family(build_glow_model, {"inverse": ("temperature",)}, convolutional=_always),
    # p = exp(-E)/Z: Z by quadrature on 2-D data only
    "ebm": Family(build_ebm_model, EBM_SAMPLERS, ("resolution",), ebm_net_is_convolutional,
                  likelihood_note=ebm_likelihood_note),
    # no likelihood: a sampler x = G(z); evaluation reports sample metrics
    "gan": Family(build_gan_model, {"generator": ()}, None, gan_net_is_convolutional),
    # exact: one causal pass
    "lm": Family(text_source.build_lm_model, {"ancestral": ("num_steps",)},
                 source=text_source.TextSource),
    # a lower bound: the importance-weighted bound with k samples
    "vae": Family(build_vae_model, {"ancestral": (), "mode": ()},
                  ("num_importance_samples", "importance_chunk_size"), _always,
                  evaluations=vae_evaluations, nll_kind="bound"),
    # no likelihood (no prior over the codes): reconstruction and codebook metrics
    "vqvae": Family(build_vqvae_model, {"ancestral": (), "mode": ()}, None, _always,
                    evaluations=vqvae_evaluations),
    # exact: one causal pass over the pixels
    "pixelcnn": Family(build_pixelcnn_model, {"ancestral": ("temperature",)}, convolutional=_always),
}


def family_of(config) -> Family:
    return choose("family", config.family, FAMILIES)


def build_source_for(config):
    """The data source of the config's family and data.name."""
    family = family_of(config)
    return family.source(config) if family.source is not None else build_source(config)


def build_model(config, source):
    """The genjax Model a config names, for data from `source`."""
    return family_of(config).build(config, source)


def sampler_kwargs(config) -> dict:
    """Keyword arguments of `model.sample` from config.sample."""
    s = config.sample
    samplers = family_of(config).samplers
    fields = choose(f"sampler of family {config.family!r}", s.method, samplers)
    kwargs = {f: s[f] for f in fields if f in s}
    if "corrector" in kwargs:
        kwargs["corrector"] = kwargs["corrector"] or None
    if s.get("guidance", 0.0):
        kwargs["guidance"] = s.guidance
    if len(samplers) > 1:
        kwargs["method"] = s.method
    return kwargs


def log_prob_kwargs(config) -> dict | None:
    """Keyword arguments of `model.log_prob` from config.eval; None when the family
    has no likelihood."""
    fields = family_of(config).log_prob_fields
    if fields is None:
        return None
    return {f: config.eval[f] for f in fields}
