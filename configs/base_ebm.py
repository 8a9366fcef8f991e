"""Defaults shared by the energy-based model configs: p(x) = exp(-E(x)) / Z on a box.

`get_config(data, objective)` returns the config of a 2-D toy density
("checkerboard", "rings", "eight_gaussians") or of the 8x8 digits ("digits"); each
config file adjusts it and locks it, and takes the objective as its argument
(`--config=configs/ebm_checkerboard.py:cd`). The objective (model.objective) picks
how Z is avoided in training (docs/ebm.md):

    cd    contrastive divergence, short-run SGLD from a persistent replay buffer
    ssm   sliced score matching (variance-reduced)
    dsm   denoising score matching at noise level model.sigma

On 2-D data the evaluation reports the exact NLL of exp(-E)/Z_box, Z_box by
quadrature on an eval.resolution^2 grid over model.box (genjax.ebm.partition).
"""
import ml_collections

from configs import common

# the model's support per dataset: holds the data (mass outside < 1e-6) with a margin
BOXES = {
    "checkerboard": (-4.5, 4.5),        # data on [-4, 4]^2 exactly
    "rings": (-4.0, 4.0),               # radii <= 3, noise 0.08: 12 sd to the edge
    "eight_gaussians": (-7.0, 7.0),     # means at radius 4, sd 0.5: 6 sd to the edge
    "digits": (-1.0, 1.0),              # dequantized images in model space
}


OBJECTIVES = ("cd", "ssm", "dsm")


def get_config(data: str, objective: str):
    if data not in BOXES:
        raise ValueError(f"unknown EBM dataset {data!r}; expected one of {sorted(BOXES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown EBM objective {objective!r}; expected one of {OBJECTIVES} "
                         "(e.g. --config=configs/ebm_checkerboard.py:cd)")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = "ebm"

    c.data = ml_collections.ConfigDict()
    c.data.name = data
    c.data.batch_size = 1024

    c.model = ml_collections.ConfigDict()
    c.model.conditional = False
    c.model.net = "mlp"                 # mlp | conv
    c.model.hidden = (128, 128, 128)    # mlp widths
    c.model.channels = (32, 64)         # conv: one stride-2 stage per entry
    c.model.dense = 128                 # conv: width of the dense layer
    c.model.activation = "silu"         # smooth: grad_x E drives the samplers
    c.model.box = BOXES[data]
    c.model.objective = objective       # cd | ssm | dsm
    # cd (Du & Mordatch 2019, Algorithm 1)
    c.model.buffer_size = 10_000
    # Fraction of chains restarted from uniform noise per update. Du & Mordatch use 5%
    # for images; for density estimation it biases the fit (20-step chains from noise
    # are far from equilibrium: on a 2-D Gaussian 5% shrank the fitted covariance to
    # 0.75 of the data's), so the 2-D configs start every chain from the buffer.
    c.model.reinit_prob = 0.0
    c.model.sgld_steps = 20             # K steps per update
    c.model.sgld_step_size = 0.01
    c.model.sgld_noise = ml_collections.FieldReference(None, field_type=float)  # None: sqrt(2 step)
    c.model.clip_grad = ml_collections.FieldReference(None, field_type=float)
    c.model.alpha = 0.1                 # energy-magnitude regulariser
    # ssm (Song et al. 2019)
    c.model.num_projections = 1
    c.model.variance_reduced = True
    # dsm (Vincent 2011)
    c.model.sigma = 0.1

    if objective == "cd":               # K + 1 energy gradients per example and update
        c.data.batch_size = 256

    c.optim = common.optimizer(learning_rate=1e-3, warmup_steps=200)
    c.train = common.training(num_steps=10_000, checkpoint_every=2_500, steps_per_call=500)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 4_000
    c.sample.method = "mala"            # mala (long runs, exact law) | sgld (the training chains)
    c.sample.num_steps = 2_000
    c.sample.step_size = 1e-3
    c.sample.noise_scale = ml_collections.FieldReference(None, field_type=float)  # sgld only

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.num = 2_000                  # held-out samples for the NLL (std. error ~0.02 nats)
    c.eval.resolution = 512             # quadrature grid of Z: resolution^2 cells over the box
    c.eval.grid_size = 64               # learned-density heatmap resolution
    c.eval.batch_size = 1024            # points per log_prob call (each call also sums Z over the grid)
    c.eval.split = "test"               # digits
    c.eval.classifier_dir = "runs/digits_classifier"
    return c
