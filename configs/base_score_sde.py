"""Defaults shared by the score-based diffusion configs on 2D toy data.

Every experiment config starts from `get_config()` here and changes fields; the
result is locked, so a misspelled key is an error that lists the valid ones.
"""
import ml_collections

from configs import common


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "score_sde"

    c.data = ml_collections.ConfigDict()
    c.data.name = "checkerboard"        # see experiments/registry.py: TOY_DENSITIES
    c.data.batch_size = 1024

    c.model = ml_collections.ConfigDict()
    c.model.sde = "vp"                  # vp | subvp | ve
    c.model.beta_min = 0.1
    c.model.beta_max = 20.0
    c.model.sigma_min = 0.01
    c.model.sigma_max = 50.0
    c.model.hidden = (256, 256, 256, 256)
    c.model.time_embedding = "sinusoidal"  # sinusoidal | fourier
    c.model.likelihood_weighting = True   # lambda(t) = g(t)^2: trains for NLL
    c.model.importance_sampling = True   # t ~ g^2/sigma^2 (only with likelihood_weighting)
    c.model.train_eps = 1e-5

    c.optim = common.optimizer(learning_rate=2e-3, warmup_steps=500)

    c.train = common.training(num_steps=6_000, checkpoint_every=2_000)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 4_000
    c.sample.method = "pc"              # pc | ode
    c.sample.num_steps = 1_000
    c.sample.predictor = "euler_maruyama"   # euler_maruyama | reverse_diffusion
    c.sample.corrector = ""             # "" (none) | langevin
    c.sample.snr = 0.16
    c.sample.eps = 1e-3

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.num = 2_000                  # held-out samples for the NLL (std. error ~0.01 nats)
    c.eval.exact_divergence = True
    c.eval.rtol = 1e-5
    c.eval.atol = 1e-5
    c.eval.eps = 1e-5
    c.eval.grid_size = 64               # learned-density heatmap resolution
    c.eval.heatmap_tol = 1e-3           # ODE tolerance for the heatmap (a picture, not a number)
    c.eval.batch_size = 512             # points per log_prob call (NLL and heatmap); the bar advances per call
    return c
