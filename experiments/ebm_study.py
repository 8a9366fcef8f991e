r"""What a trained energy-based model on a 2-D toy density has learned, measured.

    python -m experiments.ebm_study --config=configs/ebm_checkerboard.py \
        --workdir=runs/ebm [--num=4000] [--figure=docs/figures/ebm_checkerboard.png]

On the EMA parameters of a run of `experiments.main` (family "ebm"):

  * held-out NLL of exp(-E)/Z_B with Z_B by quadrature at eval.resolution R and at
    2R: their difference is the quadrature's discretisation error;
  * the data's mass outside the box (its true density integrated over the box by
    the same rule; the box should hold the data) and the model's, 1 - Z_B / Z_2B with Z_2B over a box twice as
    wide (a diagnostic of the support the model would have without the box; the
    reported density is the one restricted to the box);
  * the sliced Wasserstein distance (SWD) to `num` exact data samples of
    (a) long-run MALA chains from uniform noise on the box (config.sample's steps
    and step size; their acceptance rate beside), (b) exact draws from the
    quadrature grid of exp(-E)/Z_B (the energy's own law, no sampler error), and
    the floor: the SWD between two independent exact sets of the same size, as a
    mean +- std over 5 pairs;
  * the total variation between the model and the data over a 16 x 16 partition
    of the box (both exact, by quadrature): what misplaced mass costs, e.g. wrong
    weights of separated modes, which no local sampler started from noise shows;
  * the mass of each mode (MODES: the 2x2 blocks of the checkerboard, the rings, the
    eight components) under the data, under exp(-E)/Z_B (exact, by quadrature) and
    among the MALA samples: score matching is blind to the weights of separated
    modes, and chains from noise fill modes by the area of their basins;
  * a figure: exp(-E)/Z_B against the true density on the box, and MALA samples.

Writes ebm_study.json and ebm_density.png to the workdir (and the figure to
--figure when given) and prints the JSON.
"""
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import main as main_lib  # defines --config (with overrides) and --workdir
from experiments import plots, registry
from genjax import metrics
from genjax.ebm import model as ebm_lib
from genjax.ebm import partition

main_lib.define_num("Samples drawn by MALA for the figure and metrics (default: the script's DEFAULT_NUM).")
flags.declare_key_flag("config")
flags.declare_key_flag("workdir")
flags.declare_key_flag("verbose")
flags.declare_key_flag("num")
main_lib.define_path_flag("figure")  # also write the density figure here
flags.declare_key_flag("figure")
DEFAULT_NUM = 4_000
FLOOR_PAIRS = 5
TV_BLOCKS = 16  # the partition of the box for the total variation, per axis


def _checkerboard_block(x):
    """The 2x2 block of [-4, 4]^2 (16 blocks, 8 of them the data's) holding each point."""
    ij = jnp.clip(jnp.floor((x + 4.0) / 2.0), 0, 3).astype(jnp.int32)
    return ij[:, 0] + 4 * ij[:, 1]


def _ring(x):
    """The ring (radii 0.75, 1.5, 2.25, 3) nearest each point: radial bins split midway."""
    return jnp.searchsorted(jnp.array([1.125, 1.875, 2.625]), jnp.hypot(x[:, 0], x[:, 1]))


def _sector(x):
    """The component (at angles k pi / 4) nearest each point's angle."""
    return jnp.round(jnp.arctan2(x[:, 1], x[:, 0]) / (jnp.pi / 4)).astype(jnp.int32) % 8


# data name -> (x_N2 -> mode index, number of modes)
MODES = {"checkerboard": (_checkerboard_block, 16), "rings": (_ring, 4), "eight_gaussians": (_sector, 8)}


def ebm_study(config, workdir, num):
    exp, state = main_lib._restore(config, workdir)
    partition.check_quadrature(exp.source.data_shape)
    density = exp.source.density
    if density.log_prob is None:
        raise ValueError(f"the EBM study compares against an exact density; {config.data.name!r} has none")
    m, ec = config.model, config.eval
    net = registry.EBM_NETS[m.net](m)
    energy = jax.jit(lambda x: net.apply(state.ema_params, x))
    box = tuple(m.box)
    low, high = box
    result = {"data": config.data.name, "objective": m.objective, "step": int(state.step),
              "data_entropy_nats": float(density.entropy)}

    held_out = exp.source.held_out(ec.num)
    for res in (ec.resolution, 2 * ec.resolution):
        log_z = partition.log_partition(energy, box=box, resolution=res)
        logp = -energy(held_out) - log_z
        logp = jnp.where(partition.in_box(held_out, low, high), logp, -jnp.inf)
        result[f"nll_nats_R{res}"] = float(-jnp.mean(logp))
    result["nll_stderr"] = float(jnp.std(logp) / np.sqrt(ec.num))
    half = (high - low) / 2
    wide = (low - half, high + half)
    log_z_b = partition.log_partition(energy, box=box, resolution=ec.resolution)
    log_z_wide = partition.log_partition(energy, box=wide, resolution=2 * ec.resolution)  # same cell size
    result["mass_outside_box"] = float(-jnp.expm1(log_z_b - log_z_wide)) + 0.0  # no "-0.0"

    ref = density.sample(jax.random.PRNGKey(101), num)
    swd = lambda x, y: float(metrics.sliced_wasserstein(jax.random.PRNGKey(2), x, y))  # noqa: E731
    floors = [swd(density.sample(jax.random.PRNGKey(200 + i), num), density.sample(jax.random.PRNGKey(300 + i), num))
              for i in range(FLOOR_PAIRS)]
    result["swd_floor_mean"], result["swd_floor_std"] = float(np.mean(floors)), float(np.std(floors))

    t0 = time.perf_counter()
    mala = jax.jit(lambda k: ebm_lib.mala_from_noise(
        k, energy, num, data_shape=(2,), box=box, step_size=config.sample.step_size,
        num_steps=config.sample.num_steps))
    x_mala, acceptance = mala(jax.random.PRNGKey(11))
    x_mala = np.asarray(x_mala)
    result.update({"swd_mala": swd(x_mala, ref), "mala_acceptance": float(acceptance),
                   "mala_steps": config.sample.num_steps, "mala_step_size": config.sample.step_size,
                   "mala_seconds": time.perf_counter() - t0})
    x_grid = partition.sample_grid(jax.random.PRNGKey(12), energy, num, box=box, resolution=ec.resolution)
    result["swd_grid_draws"] = swd(x_grid, ref)

    # total variation over TV_BLOCKS^2 blocks, each the sum of its fine cells' masses
    res = ec.resolution
    if res % TV_BLOCKS:
        raise ValueError(f"eval.resolution={res} must be a multiple of {TV_BLOCKS} for the block TV")
    c_R, _ = partition.grid_centres(low, high, res)
    yy, xx = jnp.meshgrid(c_R, c_R, indexing="ij")
    fine = jnp.stack([xx.ravel(), yy.ravel()], 1)
    per_block = res // TV_BLOCKS

    def block_masses(log_w):
        w = jax.nn.softmax(log_w).reshape(TV_BLOCKS, per_block, TV_BLOCKS, per_block)
        return jnp.sum(w, axis=(1, 3)).ravel()

    true_log_p = density.log_prob(fine)
    result["tv_blocks"] = float(metrics.total_variation(
        block_masses(-partition.energy_grid(energy, box=box, resolution=res).ravel()), block_masses(true_log_p)))
    # the data's own mass outside the box (midpoint rule on the true density): the box check
    result["data_mass_outside_box"] = float(1.0 - jnp.exp(jax.scipy.special.logsumexp(true_log_p))
                                            * ((high - low) / res) ** 2)

    if config.data.name in MODES:
        mode_of, num_modes = MODES[config.data.name]
        idx = mode_of(fine)
        masses = lambda log_w: jax.ops.segment_sum(jax.nn.softmax(log_w), idx, num_modes)  # noqa: E731
        true_m = np.asarray(masses(true_log_p), np.float64)
        model_m = np.asarray(masses(-partition.energy_grid(energy, box=box, resolution=res).ravel()), np.float64)
        mala_m = np.bincount(np.asarray(mode_of(jnp.asarray(x_mala))), minlength=num_modes) / num
        keep = true_m > 0.01  # the modes of the data
        result["mode_masses"] = {"data": np.round(true_m[keep], 4).tolist(),
                                 "model": np.round(model_m[keep], 4).tolist(),
                                 "mala_from_noise": np.round(mala_m[keep], 4).tolist()}
        ratio = model_m[keep] / true_m[keep]
        result["mode_mass_ratio_min_max"] = [float(ratio.min()), float(ratio.max())]

    # the figure: both densities on the box grid (rows are y)
    c_R, _ = partition.grid_centres(low, high, ec.resolution // 2)
    yy, xx = jnp.meshgrid(c_R, c_R, indexing="ij")
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1)
    log_model = (-energy(pts) - log_z_b).reshape(xx.shape)
    log_true = density.log_prob(pts).reshape(xx.shape)
    path = os.path.join(workdir, "ebm_density.png")
    plots.density_comparison(
        path, np.exp(np.asarray(log_model)), np.exp(np.asarray(log_true)), x_mala[:2000], box,
        title=(f"EBM ({m.objective}) on {config.data.name}: NLL {result[f'nll_nats_R{ec.resolution}']:.3f} "
               f"nats (entropy {density.entropy:.3f})"))
    return result, path


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    workdir = main_lib._WORKDIR.value
    config = main_lib.trained_config(workdir)
    result, figure = ebm_study(config, workdir, flags.FLAGS.num or DEFAULT_NUM)
    with open(os.path.join(workdir, "ebm_study.json"), "w") as f:
        json.dump(result, f, indent=2)
    if flags.FLAGS.figure:
        shutil.copyfile(figure, flags.FLAGS.figure)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_lib.run(main)
