r"""Classifier-free guidance sweep on a trained class-conditional digits model.

    python -m experiments.guidance_sweep --config=configs/digits_cfg.py \
        --workdir=runs/digits_cfg [--weights=0,0.5,1,2,4] [--num=500]

For each guidance weight w draws `num` samples for labels 0, 1, ..., 9, 0, ...
(same initial noise for every w) with the config's sampler and reports the digits
classifier's accuracy on them (the fraction classified as the label they were drawn
for) and the Fréchet distance of its features to the test split. Writes
guidance_sweep.{json,md} and one sample grid per w to the workdir: the first 100
samples sorted by label, so row r holds class r; the title names the sampler, its
steps, w and the training step.
"""
import json
import os
import time

import jax
import numpy as np
from absl import flags

from experiments import main as main_lib  # defines --config (with overrides) and --workdir
from experiments import plots

main_lib.define_num("Samples per guidance weight (default 500).")
flags.declare_key_flag("config")
flags.declare_key_flag("workdir")
flags.declare_key_flag("verbose")
flags.declare_key_flag("num")
_WEIGHTS = flags.DEFINE_list("weights", ["0", "0.5", "1", "2", "4"], "Guidance weights w.")
DEFAULT_NUM = 500  # samples per weight


def guidance_sweep(config, workdir, weights, num):
    exp, state = main_lib._restore(config, workdir)
    if exp.source.num_classes is None:
        raise ValueError("the guidance sweep needs a class-conditional model (model.conditional=True)")
    kwargs = main_lib.sampler_kwargs(config)
    kwargs.pop("guidance", None)
    labels = np.arange(num) % exp.source.num_classes
    key = jax.random.fold_in(exp.key, 13)  # the same initial noise for every w
    draw = jax.jit(lambda p, k, w: exp.model.sample(p, k, num, guidance=w, **kwargs))
    rows = []
    for w in weights:
        t0 = time.perf_counter()
        samples = np.asarray(draw(state.ema_params, key, float(w)))
        quality = exp.source.sample_quality(samples, labels)
        rows.append({"guidance": float(w), **quality, "seconds": time.perf_counter() - t0})
        order = np.argsort(labels[:100], kind="stable")  # sorted by label: one class per row
        exp.source.plot_samples(os.path.join(workdir, f"guided_w{w}.png"), samples[:100][order],
                                title=grid_title(config, kwargs, w, int(state.step)), sorted_by_label=True)
        print(f"w={w}: class accuracy {quality['class_accuracy']:.3f}, "
              f"FD {quality['frechet_distance']:.2f}", flush=True)
    return rows


def grid_title(config, kwargs, weight, step):
    """The sample grid's title: model, sampler and its steps, the guidance weight, the
    training step and the weights sampled (the source adds where the classes are)."""
    return plots.sample_title(config.model.get("sde", config.family), config.sample.method,
                              num_steps=kwargs.get("num_steps"), guidance=float(weight), step=step, params="EMA")


def to_markdown(rows, config):
    steps = config.sample.get("num_steps")  # samplers without steps (an autoregressive one) have none
    lines = [f"sampler: {config.sample.method}" + ("" if steps is None else f", {steps} steps"),
             "", "| w | class accuracy | FD to test |", "|---|---|---|"]
    lines += [f"| {r['guidance']:g} | {r['class_accuracy']:.3f} | {r['frechet_distance']:.2f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    workdir = main_lib._WORKDIR.value
    config = main_lib.trained_config(workdir)
    rows = guidance_sweep(config, workdir, _WEIGHTS.value, (flags.FLAGS.num or DEFAULT_NUM))
    with open(os.path.join(workdir, "guidance_sweep.json"), "w") as f:
        json.dump(rows, f, indent=2)
    table = to_markdown(rows, config)
    with open(os.path.join(workdir, "guidance_sweep.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main_lib.run(main)
