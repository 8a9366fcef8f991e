r"""A GAN config trained on several seeds as one ensemble program, judged by its samples.

    python -m experiments.gan_study --config=configs/gan_grid25.py --workdir=runs/gan_grid25_study \
        --seeds=10 --strategy=vmap [--num=2500] [--figure=docs/figures/gan_grid25.png]

(--strategy=auto, the default, first times vmap, lax.map and a loop for one call
each; vmap was the fastest for the 2-D configs on 2 CPU cores.)

The seeds config.seed + 0..K-1 train together (`experiments.ablate.run_group`: the
states of `Experiment.init_state` vmapped over the seeds, as `genjax.train.init_ensemble`
stacks them, run by
`experiments.ensemble.ensemble_runner`, one jitted ensemble step per call where
`train.host_loop` steps from Python); member s equals `experiments.main` trained
alone with config.seed + s. Then every member draws --num samples (default
config.sample.num) from its generator EMA and from its last parameters, and the data
source judges each set as `experiments.main`'s evaluation does (grid25 / ring8:
modes captured, high-quality fraction, reverse KL of the mode histogram; digits:
Fréchet distance of the digits classifier's features to the test split, class
fractions and their entropy; the Fréchet distance also of the first 100 samples,
the count of the diffusion and flow digits numbers in docs/RESULTS.md). Reported per seed and as mean ± std (ddof 0), min and
max over seeds, with the wall time of the ensemble program, the CPU time of this
process and samples/s of one member's generator.

Writes gan_study.json, samples.npz (key `samples`, shape (K, num, ...), EMA
parameters) and samples_per_seed.png to the workdir (the figure also to --figure).
"""
import json
import os
import resource
import shutil
import time

import jax
import numpy as np
from absl import flags, logging

from experiments import ablate, configuration, plots, run_config  # ablate defines --seeds and --strategy
from experiments import main as main_lib  # defines --config (with overrides), --workdir, --num
from experiments.experiment import Experiment

main_lib.define_num("Samples per seed (default: config.sample.num).")
flags.declare_key_flag("config")
flags.declare_key_flag("workdir")
flags.declare_key_flag("verbose")
flags.declare_key_flag("num")
flags.declare_key_flag("seeds")
flags.declare_key_flag("strategy")
main_lib.define_path_flag("figure")  # also write the per-seed sample figure here
flags.declare_key_flag("figure")

SAMPLE_STREAM = 11  # the key stream experiments.main samples from
FD_SUBSET = 100


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_NOT_SUMMARIZED = ("seed", "num_modes", "data_entropy_nats")  # the same for every seed


def summarize(per_seed: list[dict]) -> dict:
    """mean, std (ddof 0), min and max over seeds of every scalar metric."""
    out = {}
    for name, value in per_seed[0].items():
        if name in _NOT_SUMMARIZED:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = np.asarray([r[name] for r in per_seed], np.float64)
            out[name] = {"mean": float(values.mean()), "std": float(values.std()),
                         "min": float(values.min()), "max": float(values.max())}
    return out


def train_seeds(exp, seeds: int, strategy: str):
    """(losses (K, num_steps), chosen strategy, stacked final states) of seeds
    config.seed + 0..K-1 trained as one ensemble (`ablate.run_group`)."""
    losses, _, chosen, states = ablate.run_group(exp, [{}], seeds, strategy)
    return losses, chosen, states


def gan_study(config, workdir: str, seeds: int, strategy: str, num: int, figure_copy: str | None = None):
    exp = Experiment(config)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    losses, chosen, states = train_seeds(exp, seeds, strategy)
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = _cpu_seconds() - cpu0
    keys = jax.numpy.stack([jax.random.fold_in(jax.random.PRNGKey(config.seed + s), SAMPLE_STREAM)
                            for s in range(seeds)])
    model_state = states.model_state
    draw = jax.jit(jax.vmap(lambda params, key, ms: exp.model.sample(
        params, key, num, **({} if ms is None else {"model_state": ms}))))
    result = {"config": config.data.name, "loss": config.model.loss, "seeds": seeds,
              "steps": int(config.train.num_steps), "strategy": chosen, "samples_per_seed": num,
              "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
              "cpu_count": os.cpu_count(), "load_average_1_5_15": list(os.getloadavg())}
    samples = {}
    for which, params in (("ema", states.ema_params), ("last", states.params)):
        samples[which] = np.asarray(draw(params, keys, model_state))
        per_seed = []
        for s in range(seeds):
            member = jax.tree_util.tree_map(lambda leaf: leaf[s], params)
            found = exp.source.evaluate(exp.model, member, workdir, samples=samples[which][s],
                                        heatmap=False, log_prob_kwargs=None)
            if "frechet_distance" in found and num > FD_SUBSET:  # the sample count of earlier digits FDs
                small = exp.source.evaluate(exp.model, member, workdir, samples=samples[which][s][:FD_SUBSET],
                                            heatmap=False, log_prob_kwargs=None)
                found[f"frechet_distance_{FD_SUBSET}"] = small["frechet_distance"]
            per_seed.append({"seed": config.seed + s, **found})
        result[which] = {"per_seed": per_seed, "summary": summarize(per_seed)}
    result["final_loss"] = losses[:, -1].tolist()

    one = jax.tree_util.tree_map(lambda leaf: leaf[0], states)
    one_kwargs = exp.model_kwargs(one)
    draw_one = jax.jit(lambda p, k: exp.model.sample(p, k, num, **one_kwargs))
    jax.block_until_ready(draw_one(one.ema_params, keys[0]))
    t0 = time.perf_counter()
    jax.block_until_ready(draw_one(one.ema_params, keys[1 % seeds]))
    result["samples_per_second"] = num / (time.perf_counter() - t0)

    np.savez(os.path.join(workdir, "samples.npz"), samples=samples["ema"])
    figure = os.path.join(workdir, "samples_per_seed.png")
    if tuple(exp.source.data_shape) == (2,):
        titles = [_title(r) for r in result["ema"]["per_seed"]]
        lim = 1.15 * float(np.abs(np.asarray(exp.source.held_out(2_000))).max())
        plots.scatter_per_seed(figure, samples["ema"], titles, lim=lim, suptitle=(
            f"{config.data.name}, {config.model.loss}: {num} samples per seed (generator EMA)"))
    else:
        exp.source.plot_samples(figure, samples["ema"][0], title=f"{config.data.name}, {config.model.loss}, seed {config.seed}")
    if figure_copy:
        shutil.copyfile(figure, figure_copy)
    with open(os.path.join(workdir, "gan_study.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def _title(row: dict) -> str:
    if "modes" in row:
        return (f"seed {row['seed']}: {row['modes']}/{row['num_modes']} modes, "
                f"{100 * row['high_quality_fraction']:.1f}% HQ, KL {row['reverse_kl']:.3f}")
    return f"seed {row['seed']}"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config, workdir = main_lib._CONFIG.value, main_lib._WORKDIR.value
    configuration.validate(config)
    run_config.check_directory(workdir)
    os.makedirs(workdir, exist_ok=True)
    num = flags.FLAGS.num or config.sample.num
    result = gan_study(config, workdir, ablate._SEEDS.value, ablate._STRATEGY.value, num, flags.FLAGS.figure)
    brief = {k: v for k, v in result.items() if k not in ("ema", "last")}
    brief["ema"] = result["ema"]["summary"]
    brief["last"] = result["last"]["summary"]
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main_lib.run(main, required=("config", "workdir"))
