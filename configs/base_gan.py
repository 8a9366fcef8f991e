"""Defaults shared by the GAN configs (docs/gan.md): a generator x = G(z), z ~ N(0, I),
trained against a critic, with one optimizer per player.

`get_config(data, loss)` returns the config of a 2-D mode-collapse benchmark
("grid25", "ring8") or of the 8x8 digits ("digits"); each config file adjusts it,
locks it and takes the loss as its argument (`--config=configs/gan_grid25.py:wgan_gp`):

    wgan_gp         Wasserstein critic + gradient penalty (Gulrajani et al. 2017)
    non_saturating  the discriminator's cross-entropy, -log D(G(z)) for the generator
                    (Goodfellow et al. 2014): the plain GAN
    hinge           Lim & Ye 2017; Miyato et al. 2018

There is no likelihood: evaluation reports the source's sample metrics (modes,
high-quality fraction and reverse KL on grid25/ring8; Fréchet distance and class
coverage on digits). `experiments.gan_study` trains several seeds as one ensemble
program and reports them as mean ± std.
"""
import ml_collections

from configs import common

LOSSES = ("wgan_gp", "non_saturating", "hinge")


def get_config(data: str, loss: str):
    if loss not in LOSSES:
        raise ValueError(f"unknown GAN loss {loss!r}; expected one of {LOSSES} "
                         "(e.g. --config=configs/gan_grid25.py:wgan_gp)")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "gan"

    c.data = ml_collections.ConfigDict()
    c.data.name = data
    c.data.batch_size = 256

    c.model = ml_collections.ConfigDict()
    c.model.conditional = False
    c.model.net = "mlp"                       # mlp | conv
    c.model.generator_hidden = (256, 256, 256, 256)   # mlp
    c.model.critic_hidden = (128, 128, 128)            # mlp
    c.model.width = 64                        # conv: channels of the first stage
    c.model.negative_slope = 0.2              # the critic's LeakyReLU (ReLU critics died at lr 1e-3)
    c.model.latent_dim = 2
    c.model.loss = loss
    # lambda of the interpolate gradient penalty; None: 10 for wgan_gp (the paper), 0 otherwise
    c.model.gp_weight = ml_collections.FieldReference(None, field_type=float)
    c.model.r1_weight = 0.0                   # gamma of (gamma / 2) E ||grad D(x)||^2 on data
    c.model.n_critic = ml_collections.FieldReference(None, field_type=int)  # None: 5 wgan_gp, else 1
    c.model.spectral_norm = False

    opt = dict(learning_rate=1e-4, warmup_steps=0)
    generator, critic = common.optimizer(**opt), common.optimizer(**opt)
    for section in (generator, critic):
        section.b1, section.b2 = 0.5, 0.9     # Gulrajani et al. 2017's Adam
        section.grad_clip = 0.0               # 0: no clipping
    c.optim = common.group_optimizers(ema_decay=0.999, generator=generator, critic=critic)
    c.train = common.training(num_steps=5_000, checkpoint_every=5_000, steps_per_call=500)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 2_500                      # per seed, as in VEEGAN / PacGAN
    c.sample.method = "generator"

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.num = 2_500
    c.eval.grid_size = 64
    c.eval.split = "test"                     # digits
    c.eval.classifier_dir = "runs/digits_classifier"
    return c


def set_both(config, **values):
    """Sets the same optimizer values for the generator and the critic."""
    for group in ("generator", "critic"):
        for name, value in values.items():
            config.optim[group][name] = value


def mixture_config(data: str, loss: str, num_steps: int):
    """The 2-D mixture benchmarks (grid25, ring8) with the settings measured in
    docs/gan.md: WGAN-GP with lambda = 1 and two critic updates per generator update,
    Adam(b1 = 0, b2 = 0.9) at 4e-3; the non-saturating GAN with Adam(0.5, 0.9) at 1e-3;
    generator EMA 0.99 for both."""
    config = get_config(data, loss)
    config.train.num_steps = num_steps
    config.train.checkpoint_every = num_steps
    config.optim.ema_decay = 0.99
    if loss == "wgan_gp":
        # Gulrajani et al.'s paper uses lambda = 10 and n_critic = 5; their released
        # toy-data code uses lambda = 0.1. Measured on grid25: lambda = 10 did not learn
        # the grid in 4000 steps; lambda 0.1 and 1 did, and n_critic = 2 reached a higher
        # high-quality fraction than 5 or 1 at equal CPU time.
        config.model.gp_weight = 1.0
        config.model.n_critic = 2
        set_both(config, learning_rate=4e-3, b1=0.0)
    else:
        set_both(config, learning_rate=1e-3)
    config.lock()
    return config
