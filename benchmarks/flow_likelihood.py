"""Likelihood throughput of the flow families on the same data and machine:
coupling flow (exact, one pass), flow matching and CNF (the probability-flow /
FFJORD ODE through `genjax.integrate`), printed as examples/s and as ratios to the
coupling flow.

    python -m benchmarks.flow_likelihood [--realnvp runs/nsf] [--fm runs/fm] [--cnf runs/cnf]
        [--num 2000] [--repeats 5] [--hutchinson] [--quick]

A family given a workdir uses the trained EMA parameters of that run, built from
the run's saved config (`experiments.run_config.load_run`). A family without one
is built from its config file (configs/toy_realnvp.py, toy_flow_matching.py,
toy_cnf.py) at its initial parameters, which the output and the table say: the
coupling flow's time does not depend on training, but an untrained vector field is
nearly constant, so its adaptive solve takes few steps and its number is not
comparable with a trained one's. Held-out checkerboard samples (each run's own
data); median of --repeats timed calls after warm-up, `block_until_ready`.
--quick: 100 points, 2 repeats.
"""
import argparse

import jax
import numpy as np

from benchmarks.common import device_description, no_run_note, time_fn, trained_config
from configs import toy_cnf, toy_flow_matching, toy_realnvp
from experiments import registry
from experiments.experiment import Experiment

FAMILIES = {"realnvp": toy_realnvp, "fm": toy_flow_matching, "cnf": toy_cnf}
UNTRAINED_TIMING = {
    "realnvp": "timings do not depend on training: one pass through the coupling layers",
    "fm": "an untrained field is nearly constant: its adaptive solve takes fewer steps than a trained "
          "one's, so its examples/s are not comparable",
    "cnf": "an untrained field is nearly constant: its adaptive solve takes fewer steps than a trained "
           "one's, so its examples/s are not comparable",
}


def load(name, workdir):
    """(experiment, EMA params, config, trained?) of the family `name`."""
    module = FAMILIES[name]
    if workdir:
        config = trained_config(workdir, module.get_config().family, flag=f"--{name}")
        exp = Experiment(config)
        return exp, exp.restore(workdir).ema_params, config, True
    config = module.get_config()
    exp = Experiment(config)
    print(no_run_note(f"--{name}", f"an untrained {config.family} model, {module.__name__.replace('.', '/')}.py",
                      UNTRAINED_TIMING[name]))
    return exp, exp.init_state().ema_params, config, False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in FAMILIES:
        parser.add_argument(f"--{name}", default=None, help=f"trained workdir of a {name} run")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hutchinson", action="store_true", help="Hutchinson instead of exact divergence")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.num, args.repeats = 100, 2
    print(f"device: {device_description()}")
    rows = []
    for name in FAMILIES:
        exp, params, config, trained = load(name, getattr(args, name))
        x = exp.source.held_out(args.num)
        kwargs = registry.log_prob_kwargs(config)
        if "exact_divergence" in kwargs:
            kwargs["exact_divergence"] = not args.hutchinson
        log_prob = jax.jit(lambda p, k, x, exp=exp, kwargs=kwargs: exp.model.log_prob(p, k, x, **kwargs))
        seconds = time_fn(log_prob, params, jax.random.PRNGKey(0), x, repeats=args.repeats)
        nll = -float(np.mean(np.asarray(log_prob(params, jax.random.PRNGKey(0), x))))
        rows.append((name, config.family, trained, args.num / seconds, nll, kwargs))
    base = rows[0][3]
    print(f"{args.num} held-out points per family; median of {args.repeats} after warm-up; "
          f"log_prob keywords per family shown")
    print("| model | trained | examples/s | ratio to coupling flow | NLL (nats) | keywords |")
    print("|---|---|---|---|---|---|")
    for name, family, trained, rate, nll, kwargs in rows:
        print(f"| {name} ({family}) | {'yes' if trained else 'NO (initial parameters)'} | {rate:,.0f} | "
              f"{rate / base:.4f} | {nll:.3f} | {kwargs} |")


if __name__ == "__main__":
    main()
