"""Defaults shared by the diffusion configs on sklearn's 8x8 digits (17 levels).

Images are dequantized into [-1, 1]; the NLL is reported per image of the discrete
data (nats) and in bits/dim. The result is locked, so a misspelled key is an error
that lists the valid ones.
"""
import ml_collections

from configs import common


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "score_sde"              # score_sde (continuous DSM) | ddpm (discrete L_simple)

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.batch_size = 64
    c.data.data_dir = ""                # for data.name = "tfds:<name>" (e.g. tfds:mnist): where it is prepared

    c.model = ml_collections.ConfigDict()
    c.model.sde = "vp"                  # vp | subvp | ve | ddpm_linear | ddpm_cosine
    c.model.beta_min = 0.1
    c.model.beta_max = 20.0
    c.model.sigma_min = 0.01
    c.model.sigma_max = 50.0
    c.model.num_timesteps = 1000        # ddpm_* schedules
    c.model.prediction = "eps"          # eps | x0 | v (ddpm family; score_sde trains eps)
    c.model.likelihood_weighting = True
    c.model.importance_sampling = True
    c.model.train_eps = 1e-3
    c.model.conditional = False         # class-conditional with label dropout (CFG)
    c.model.label_dropout = 0.1
    c.model.net = "unet"                # unet | mlp
    c.model.channels = (16, 32)         # 103k parameters: trains on 2 CPU cores
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = ()
    c.model.dropout = 0.1
    c.model.hidden = (512, 512, 512)    # mlp only
    c.model.time_embedding = "sinusoidal"

    c.optim = common.optimizer(learning_rate=1e-3, warmup_steps=200)

    c.train = common.training(num_steps=8_000, checkpoint_every=1_000)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 100
    c.sample.method = "dpm_solver"      # pc | ode | ddim | dpm_solver | edm_heun | ancestral
    c.sample.num_steps = 20
    c.sample.order = 3
    c.sample.eta = 0.0
    c.sample.discretization = "logsnr"  # logsnr | edm | quadratic | uniform
    c.sample.eps = 1e-3
    c.sample.predictor = "euler_maruyama"
    c.sample.corrector = ""
    c.sample.snr = 0.16
    c.sample.guidance = 0.0             # classifier-free guidance weight w (conditional models)

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.split = "test"
    c.eval.num = 0                      # images of the split to evaluate (0: all)
    c.eval.batch_size = 64              # images per log_prob call; the bar advances per call
    c.eval.exact_divergence = False     # Hutchinson (Rademacher), one probe per image
    c.eval.rtol = 1e-5
    c.eval.atol = 1e-5
    c.eval.eps = 1e-3                   # p_eps is a normalized density, so the bound holds at any eps
    c.eval.classifier_dir = "runs/digits_classifier"
    return c
