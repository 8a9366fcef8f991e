"""Defaults shared by the flow configs (flow matching, CNF, RealNVP) on 2D toy data.

Each family config starts from `get_config(family)` here, which adds that
family's model fields, changes what it needs and locks the result.
"""
import ml_collections

from configs import common


def get_config(family: str):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.family = family                   # flow_matching | cnf | realnvp

    c.data = ml_collections.ConfigDict()
    c.data.name = "checkerboard"        # see experiments/registry.py: TOY_DENSITIES
    c.data.batch_size = 1024

    c.model = ml_collections.ConfigDict()
    c.model.hidden = (256, 256, 256, 256)
    if family in ("flow_matching", "cnf"):
        c.model.time_embedding = "sinusoidal"  # sinusoidal | fourier
    if family == "flow_matching":
        c.model.sigma_min = 0.0         # conditional OT path width at t = 1
        c.model.ot_coupling = False     # mini-batch OT pairing of noise and data
    elif family == "cnf":
        c.model.exact_divergence = True  # exact trace in the training loss (D = 2)
        c.model.train_method = "rk4"    # fixed-step solver the loss backpropagates through
        c.model.train_num_steps = 8
        c.model.kinetic_weight = 0.1    # RNODE (Finlay et al. 2020): keeps the fixed-step
        c.model.jacobian_weight = 0.1   # training solve honest (0.01 still let RK4(8) be exploited)
    elif family == "realnvp":
        c.model.coupling = "spline"     # affine | spline
        c.model.num_layers = 8
        c.model.mixing = "reverse"      # reverse | permute | lu
        c.model.num_bins = 16
        c.model.bound = 4.5             # spline interval [-bound, bound]; identity outside
        c.model.log_scale_bound = 3.0   # affine coupling only

    c.optim = common.optimizer(learning_rate=2e-3, warmup_steps=500)

    c.train = common.training(num_steps=10_000, checkpoint_every=2_000)

    c.sample = ml_collections.ConfigDict()
    c.sample.num = 4_000
    if family == "realnvp":
        c.sample.method = "inverse"     # exact: x = F^{-1}(T z)
        c.sample.temperature = 1.0
    else:
        c.sample.method = "adaptive"    # adaptive | euler | midpoint | heun | rk4
        c.sample.num_steps = 100        # fixed-step solvers only
        c.sample.rtol = 1e-5
        c.sample.atol = 1e-5

    c.eval = ml_collections.ConfigDict()
    c.eval.params = "ema"               # ema | raw: the weights sampled and evaluated (--mode=sample|eval)
    c.eval.num = 2_000                  # held-out samples for the NLL (std. error ~0.01 nats)
    c.eval.grid_size = 64               # learned-density heatmap resolution
    c.eval.heatmap_tol = 1e-3           # ODE tolerance for the heatmap (a picture, not a number)
    c.eval.batch_size = 512             # points per log_prob call (NLL and heatmap); the bar advances per call
    if family != "realnvp":             # RealNVP's log-density needs no solver
        c.eval.exact_divergence = True
        c.eval.rtol = 1e-5
        c.eval.atol = 1e-5
    return c
