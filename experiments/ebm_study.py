"""What a trained energy-based model on a 2-D toy density has learned, measured.

    python -m experiments.ebm_study --config=configs/ebm_checkerboard.py \
        --workdir=runs/ebm [--num=4000] [--figure=docs/figures/ebm_checkerboard.png]

On the EMA parameters of a run of `experiments.main` (family "ebm"):

  * held-out NLL of exp(-E)/Z_B with Z_B by quadrature at eval.resolution R and at
    2R: their difference is the quadrature's discretisation error;
  * the model's mass outside the box, 1 - Z_B / Z_2B with Z_2B over a box twice as
    wide (a diagnostic of the support the model would have without the box; the
    reported density is the one restricted to the box);
  * the sliced Wasserstein distance (SWD) to `num` exact data samples of
    (a) long-run MALA chains from uniform noise on the box (config.sample's steps
    and step size; their acceptance rate beside), (b) exact draws from the
    quadrature grid of exp(-E)/Z_B (the energy's own law, no sampler error), and
    the floor: the SWD between two independent exact sets of the same size, as a
    mean +- std over 5 pairs;
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

_FIGURE = flags.DEFINE_string("figure", None, "Also write the density figure here.")
DEFAULT_NUM = 4_000
FLOOR_PAIRS = 5


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
    config, workdir = main_lib._CONFIG.value, main_lib._WORKDIR.value
    result, figure = ebm_study(config, workdir, main_lib.NUM_SAMPLES.value or DEFAULT_NUM)
    with open(os.path.join(workdir, "ebm_study.json"), "w") as f:
        json.dump(result, f, indent=2)
    if _FIGURE.value:
        shutil.copyfile(figure, _FIGURE.value)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_lib.run(main)
