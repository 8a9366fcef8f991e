"""Likelihood throughput of the flow families on the same data and machine:
coupling flow (exact, one pass), flow matching and CNF (the probability-flow /
FFJORD ODE through `genjax.integrate`), printed as examples/s and as ratios to the
coupling flow.

    python -m benchmarks.flow_likelihood [--realnvp runs/nsf] [--fm runs/fm] [--cnf runs/cnf]
        [--num 2000] [--exact-divergence | --hutchinson]

Each family is built from its config (configs/toy_realnvp.py, toy_flow_matching.py,
toy_cnf.py) and uses the trained EMA parameters of the given workdir; a family
without a workdir uses freshly initialized parameters, which the table marks
(an untrained vector field is nearly constant, so its adaptive solve is cheap and
its number is not comparable). Held-out checkerboard samples; median of 5 timed
calls after warm-up, `block_until_ready`.
"""
import argparse
import os

import jax
import numpy as np

from benchmarks.common import device_description, time_fn
from configs import toy_cnf, toy_flow_matching, toy_realnvp
from experiments import main as main_lib
from experiments.checkpoint import Checkpointer
from experiments import registry

FAMILIES = {"realnvp": toy_realnvp, "fm": toy_flow_matching, "cnf": toy_cnf}


def load(config, workdir):
    exp = main_lib.Experiment(config)
    state = exp.init_state()
    trained = False
    if workdir and os.path.isdir(workdir):
        ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
        restored = ckpt.restore(state)
        ckpt.close()
        if restored is not None:
            state, trained = restored, True
    return exp, state.ema_params, trained


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in FAMILIES:
        parser.add_argument(f"--{name}", default=None, help=f"trained workdir of the {name} config")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--hutchinson", action="store_true", help="Hutchinson instead of exact divergence")
    args = parser.parse_args()
    print(f"device: {device_description()}")
    rows = []
    for name, module in FAMILIES.items():
        config = module.get_config()
        exp, params, trained = load(config, getattr(args, name))
        x = exp.source.held_out(args.num)
        kwargs = registry.log_prob_kwargs(config)
        if "exact_divergence" in kwargs:
            kwargs["exact_divergence"] = not args.hutchinson
        log_prob = jax.jit(lambda p, k, x, exp=exp, kwargs=kwargs: exp.model.log_prob(p, k, x, **kwargs))
        seconds = time_fn(log_prob, params, jax.random.PRNGKey(0), x)
        nll = -float(np.mean(np.asarray(log_prob(params, jax.random.PRNGKey(0), x))))
        rows.append((name, config.family, trained, args.num / seconds, nll, kwargs))
    base = rows[0][3]
    print(f"{args.num} held-out checkerboard points; log_prob keywords per family shown")
    print("| model | trained | examples/s | ratio to coupling flow | NLL (nats) | keywords |")
    print("|---|---|---|---|---|---|")
    for name, family, trained, rate, nll, kwargs in rows:
        print(f"| {name} ({family}) | {'yes' if trained else 'NO (fresh init)'} | {rate:,.0f} | "
              f"{rate / base:.4f} | {nll:.3f} | {kwargs} |")


if __name__ == "__main__":
    main()
