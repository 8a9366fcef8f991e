r"""K ensemble members trained in one program (vmap, lax.map) against K runs one
after another (a Python loop over one compiled single-member program).

    python -m benchmarks.ensemble [--members 8] [--steps 100] [--hidden 128] [--batch 256] \
        [--repeats 5] [--quick]

Trains a VP-SDE score MLP on the checkerboard from its initialization (no trained
run is read: the time of a step does not depend on the weights). Prints the
median time per call of each strategy after a warm-up and its ratio to the loop.
--quick: 2 members x 5 steps, MLP 3x32, batch 32, 2 repeats.
"""
import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import device_description, time_fn
from experiments.ensemble import ensemble_runner
from genjax import train
from genjax.data import toy2d
from genjax.diffusion import model as diffusion_model
from genjax.diffusion import sde as sde_lib
from genjax.nn.mlp import TimeMLP


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sizes, a smoke run (replaces the size flags)")
    args = parser.parse_args()
    if args.quick:
        args.members, args.steps, args.hidden, args.batch, args.repeats = 2, 5, 32, 32, 2

    density = toy2d.checkerboard()
    model = diffusion_model.make_score_model(
        sde_lib.VPSDE(), TimeMLP(hidden=(args.hidden,) * 3), data_shape=(2,))
    tx, _ = train.make_optimizer(learning_rate=1e-3, total_steps=10_000, warmup_steps=100)
    batch_fn = lambda key, step: density.sample(jax.random.fold_in(key, step), args.batch)
    train_fn = train.make_train_fn(model.loss, tx, steps_per_call=args.steps, batch_fn=batch_fn)
    keys = jax.random.split(jax.random.PRNGKey(0), args.members)
    lrs = jnp.geomspace(3e-4, 3e-3, args.members)
    states = train.init_ensemble(model.init, tx, keys, density.sample(keys[0], args.batch), learning_rate=lrs)

    print(f"device: {device_description()}")
    print(f"{args.members} members x {args.steps} steps per call, MLP 3x{args.hidden}, batch {args.batch}, "
          f"median of {args.repeats} after warm-up; trained from initialization (no trained run is read)")
    times = {}
    results = {}
    for strategy in ("loop", "map", "vmap"):
        fn = train.make_ensemble_fn(train_fn, strategy)
        times[strategy] = time_fn(fn, states, repeats=args.repeats)
        results[strategy] = fn(states)[1]["loss"]
    for strategy, t in times.items():
        print(f"{strategy:5s} {t * 1e3:9.1f} ms/call   loop/{strategy} = {times['loop'] / t:5.2f}x")
    best = min(times, key=times.get)
    _, chosen, _ = ensemble_runner(train_fn, states)
    print(f"fastest: {best}; the driver's automatic choice on this backend: {chosen}")
    diff = max(float(jnp.max(jnp.abs(results[s] - results["loop"]))) for s in results)
    print(f"max |loss difference| between strategies: {diff:.2e}")


if __name__ == "__main__":
    main()
