r"""One table for every family: trained runs side by side on the digits test split.

    python -m experiments.compare --runs_dir=runs/table [--out=runs/table/compare] [--num=1000]
    python -m experiments.compare --runs=runs/a,runs/b [--repeats=3] [--reuse]

Each run's family and config are read from its workdir (`experiments.main.trained_config`:
config.json plus the command line's --config.sample.* / --config.eval.* overrides,
which apply to every run). Per run, with the weights config.eval.params names:

  test NLL      nats per test image of the discrete 17-level data, from the run's
                eval.json when it holds the whole test split, else computed with the
                run's own evaluation (`ImageSource.discrete_nll`); its kind is the
                family's `nll_kind` (exact, ode: an ODE flow's density, bound: ELBO /
                IWAE) or none when the family has no likelihood (or none on this data).
                A continuous density on dequantized images gives a bound on the
                discrete NLL whatever its kind (Theis et al. 2016).
  FD            Fréchet distance of the digits classifier's features of --num samples
                to the test split (Heusel et al. 2017); the floor, FD(train split,
                test split), is 11.4 and is computed again here.
  coverage      the entropy of the classifier's class histogram of the samples (nats,
                ln 10 = 2.303 when every digit is equally frequent) and the smallest
                class fraction; class accuracy too for a class-conditional model
                (samples drawn for labels 0, 1, ..., 9, 0, ...).
  samples/s     --num samples per second of the jitted sampler on this machine:
                one warm-up call (compilation), then the median of --repeats calls,
                each ended by block_until_ready (fewer once the timed calls have
                taken 60 s together: a slow sampler is timed once).
  training      train_seconds of the run's metrics.jsonl (cumulative wall time of its
                compiled calls), and the steps trained.
  parameters    every trained array of the state's params (a GAN: generator and critic).
  memorized     the fraction of the --num samples that are near-copies of a training
                image of the run's own training set (`genjax.metrics.memorization`,
                Carlini et al. 2023), beside the same fraction for the held-out test
                images against that training set (the floor).

A run whose samples are not digits images (a toy density, text) is skipped with the
reason. Writes compare.md and compare.json to --out (default <runs_dir>/compare, or
runs/compare) and prints the table; each row is also kept in --out/rows.jsonl as it
is measured, and --reuse keeps those of runs that have not trained since.
"""
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import configuration, datasets, registry, run_config, run_loop
from experiments import main as main_lib  # defines --config (with overrides), --workdir, --num
from experiments.experiment import Experiment
from genjax import metrics as metrics_lib
from genjax.data import images as images_lib

main_lib.define_num("Samples per run (default 1000).")
flags.declare_key_flag("config")
flags.declare_key_flag("verbose")
flags.declare_key_flag("num")
_RUNS = flags.DEFINE_list("runs", [], "Trained run workdirs, comma-separated.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", None, "A directory whose subdirectories holding a config.json "
                                "are runs (added to --runs).")
main_lib.define_path_flag("out")  # where compare.md and compare.json go (default <runs_dir>/compare, or runs/compare)
flags.declare_key_flag("out")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed sampling calls per run (the median is reported).")
_REUSE = flags.DEFINE_bool("reuse", False, "Keep the rows of --out/rows.jsonl whose run has not trained "
                           "since (same newest checkpoint, same --num).")

DEFAULT_NUM = 1000
FD_FLOOR = 11.4  # FD(test split, train split) of the digits classifier (docs/RESULTS.md)
SAMPLE_STREAM = 11  # the key stream experiments.main samples from
GRID_SAMPLES = 64  # samples per run in samples.png (a square number)
NLL_KIND_LABELS = {"exact": "exact", "ode": "exact (ODE)", "bound": "bound"}

COLUMNS = ("run", "family", "sampler", "steps", "test NLL (nats/image)", "NLL kind", "FD",
           "class entropy (min class)", "samples/s", "training (s)", "parameters",
           "memorized: samples / test (floor)")


def find_runs(runs=(), runs_dir=None) -> list:
    """The run workdirs: `runs` in order, then the subdirectories of `runs_dir` that
    hold a config.json (sorted)."""
    found = [r.rstrip("/") for r in runs if r]
    if runs_dir:
        if not os.path.isdir(runs_dir):
            raise configuration.ConfigError(f"--runs_dir={runs_dir}: no such directory")
        for name in sorted(os.listdir(runs_dir)):
            path = os.path.join(runs_dir, name)
            if os.path.isfile(os.path.join(path, run_config.CONFIG_FILE)) and path not in found:
                found.append(path)
    if not found:
        raise configuration.ConfigError("no runs: give --runs=DIR,... or --runs_dir=DIR (subdirectories with a "
                                        f"{run_config.CONFIG_FILE})")
    return found


def run_config_of(workdir: str):
    """The trained run's config: `main.trained_config` once flags are parsed (the
    command line's sample/eval overrides apply), else the saved config alone."""
    if flags.FLAGS.is_parsed():
        return main_lib.trained_config(workdir)
    config = run_config.load_run(workdir)
    configuration.validate(config)
    return config


def skip_reason(config, source) -> str | None:
    """Why a run does not belong in the digits table, or None: its samples must be
    images of the digits, judged by the digits classifier."""
    if not getattr(source, "has_classifier", False):
        shape = getattr(source, "data_shape", None)
        return (f"its data ({config.data.get('name')!r}, samples of shape {shape}) are not the 8x8 digits images "
                f"that the table's FD, class coverage and memorization are measured on")
    return None


def count_parameters(params) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def training_time(workdir: str) -> float | None:
    """Cumulative training seconds recorded in the run's metrics.jsonl, None if none."""
    path = os.path.join(workdir, "metrics.jsonl")
    seconds = run_loop.previous_train_seconds(path)
    return seconds if seconds > 0 else None


def saved_test_nll(workdir: str, num_test: int, params_kind: str):
    """(nll, stderr) from the run's eval.json when it evaluated the whole test split
    with the same weights; None otherwise."""
    path = os.path.join(workdir, "eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if ("nll_nats" not in saved or saved.get("split") != "test" or saved.get("num_eval") != num_test
            or saved.get("params", "ema") != params_kind):
        return None
    return saved["nll_nats"], saved.get("nll_stderr")


def time_sampler(fn, args, repeats: int, budget_s: float = 60.0):
    """(output of the warm-up call, median seconds of up to `repeats` further calls,
    the number of calls timed): calls stop once they have taken `budget_s` seconds
    together, so a slow sampler is timed once."""
    out = jax.block_until_ready(fn(*args))
    times = []
    while len(times) < max(repeats, 1) and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)), len(times)


def test_floor(train_int, num_neighbours: int = metrics_lib.MEMORIZATION_NEIGHBOURS) -> float:
    """The memorization fraction of the held-out test images against `train_int`."""
    test_int, _ = datasets.load_digits("test")
    return float(metrics_lib.memorization(test_int, train_int, num_neighbours=num_neighbours)["fraction"])


def evaluate_run(workdir: str, *, num: int = DEFAULT_NUM, repeats: int = 3, classifier_params=None,
                 say=print) -> dict:
    """One row of the table (a dict), or {"run", "family", "skipped": why}."""
    from experiments import classifier

    config = run_config_of(workdir)
    family = registry.family_of(config)
    source = registry.build_source_for(config)
    row = {"run": workdir, "family": config.family}
    why = skip_reason(config, source)
    if why is not None:
        row["skipped"] = why
        say(f"{workdir}: skipped ({config.family}): {why}")
        return row
    exp = Experiment(config, source)
    state = exp.restore(workdir)
    params = main_lib.eval_params(config, state)
    row["steps"] = int(state.step)
    row["params"] = config.eval.get("params", "ema")
    row["parameters"] = count_parameters(state.params)
    row["training_seconds"] = training_time(workdir)
    row["train_size"] = int(len(source.train_images))

    # test NLL, its kind
    test_int, _ = source.load_split("test")
    ll_kwargs = exp.log_prob_kwargs(state)
    if ll_kwargs is None:
        row["nll_kind"] = "none"
        row["no_likelihood"] = exp.likelihood_note() or f"family {config.family!r} has no likelihood"
    else:
        row["nll_kind"] = family.nll_kind
        saved = saved_test_nll(workdir, len(test_int), row["params"])
        if saved is not None:
            row["nll_nats"], row["nll_stderr"] = saved
            row["nll_from"] = "eval.json"
        else:
            say(f"{workdir}: test NLL ({len(test_int)} images) ...", flush=True)
            nll = source.discrete_nll(exp.model, params, "test", batch_size=config.eval.get("batch_size", 64),
                                      **ll_kwargs)
            row["nll_nats"] = float(nll.mean())
            row["nll_stderr"] = float(nll.std() / math.sqrt(len(nll)))
            row["nll_from"] = "computed"

    # samples: timed, then judged
    kwargs = {**main_lib.sampler_kwargs(config), **exp.model_kwargs(state)}
    row["sampler"] = describe_sampler(config, kwargs)
    fn = jax.jit(lambda p, k: exp.model.sample(p, k, num, **kwargs))
    say(f"{workdir}: {num} samples ({row['sampler']}), {repeats} timed calls ...", flush=True)
    samples, seconds, timed = time_sampler(fn, (params, jax.random.fold_in(exp.key, SAMPLE_STREAM)), repeats)
    row["num_samples"] = num
    row["samples_per_sec"] = num / seconds
    row["sample_seconds"] = seconds
    row["sample_calls_timed"] = timed
    if hasattr(os, "getloadavg"):
        row["load_average"] = round(os.getloadavg()[0], 1)  # of the machine when the sampler was timed
    levels = np.asarray(images_lib.to_levels(jnp.asarray(samples), source.num_levels))
    row["grid_levels"] = levels[:GRID_SAMPLES, ..., 0].tolist()  # the first samples, for samples.png
    clf = classifier_params if classifier_params is not None else classifier.load_or_train(
        config.eval.classifier_dir)
    row["fd"] = classifier.frechet_distance_to(clf, levels, test_int)
    _, predicted = classifier.features_and_predictions(clf, levels)
    coverage = metrics_lib.class_coverage(predicted, datasets.DIGITS_CLASSES)
    row["class_entropy_nats"] = float(coverage["class_entropy"])
    row["class_fractions"] = [round(float(f), 4) for f in coverage["class_fractions"]]
    if source.num_classes is not None:
        row["class_accuracy"] = float(np.mean(np.asarray(predicted) == np.arange(num) % source.num_classes))

    # memorization against the run's own training set
    train_int = source.train_images
    k = min(metrics_lib.MEMORIZATION_NEIGHBOURS, len(train_int) - 1)
    probe = metrics_lib.memorization(levels, train_int, num_neighbours=k)
    row["memorized_fraction"] = float(probe["fraction"])
    row["memorized_median_ratio"] = float(np.median(np.asarray(probe["ratio"])))
    row["memorized_test_floor"] = test_floor(train_int, k)
    row["memorization_neighbours"] = k
    return row


def describe_sampler(config, kwargs) -> str:
    """The sampler in a few words: method, steps, guidance weight."""
    s = config.sample
    words = [s.method]
    if "num_steps" in kwargs:
        words.append(f"{kwargs['num_steps']} steps")
    if kwargs.get("guidance"):
        words.append(f"w={kwargs['guidance']:g}")
    return " ".join(words)


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def markdown(rows: list, *, num: int, floor_fd: float | None, machine: str) -> str:
    """The table in markdown, skipped runs listed below it with why."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if "skipped" in r:
            continue
        if r["nll_kind"] == "none":
            nll = "none"
        else:
            nll = f"{r['nll_nats']:.2f} ± {r['nll_stderr']:.2f}" if r.get("nll_stderr") is not None \
                else f"{r['nll_nats']:.2f}"
        kind = NLL_KIND_LABELS.get(r["nll_kind"], r["nll_kind"])
        entropy = f"{r['class_entropy_nats']:.3f} ({min(r['class_fractions']):.3f})"
        if "class_accuracy" in r:
            entropy += f"; accuracy {r['class_accuracy']:.3f}"
        memo = f"{r['memorized_fraction']:.3f} / {r['memorized_test_floor']:.3f}"
        if r.get("train_size", 1000) != 1000:
            memo += f" ({r['train_size']} training images)"
        cells = [r["run"], r["family"], r["sampler"], str(r["steps"]), nll, kind, f"{r['fd']:.1f}", entropy,
                 _fmt(r["samples_per_sec"], ".0f"), _fmt(r["training_seconds"], ".0f"), f"{r['parameters']:,}",
                 memo]
        lines.append("| " + " | ".join(cells) + " |")
    floor = f"{floor_fd:.1f} computed here" if floor_fd is not None else "not computed"
    lines += ["", f"Digits test split (447 images); {num} samples per run. NLL: nats per test image of the "
              f"discrete 17-level data (mean ± standard error); a continuous density on dequantized images "
              f"gives a bound on it whatever the kind, which says how the model's density is computed. "
              f"FD floor: FD(train split, test split) = {FD_FLOOR} ({floor}). Class entropy: ln 10 = 2.303 "
              f"when every digit is equally frequent. Memorized: fraction of near-copies of a training image "
              f"(nearest distance below 1/3 of the mean distance to the next "
              f"{metrics_lib.MEMORIZATION_NEIGHBOURS}, Carlini et al. 2023) among the samples / among the held-out "
              f"test images. Machine: {machine}{_loads(rows)}."]
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {r['run']} ({r['family']}): {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def _loads(rows) -> str:
    loads = [r["load_average"] for r in rows if "load_average" in r]
    return f"; 1-minute load average when the samplers were timed: {min(loads)} to {max(loads)}" if loads else ""


def machine_description() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores, "
            f"{platform.machine()}, load average at the end {load}")


ROWS_FILE = "rows.jsonl"  # one measured row per line, kept for reuse


def _save_rows(out_dir: str, rows: list) -> None:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, ROWS_FILE)
    known = {}
    if os.path.exists(path):
        with open(path) as f:
            known = {r["run"]: r for r in map(json.loads, f)}
    known.update({r["run"]: r for r in rows})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in known.values())


def cached_row(out_dir: str, workdir: str, num: int) -> dict | None:
    """The row of `workdir` measured earlier into out_dir when it is still the run's
    newest checkpoint, with the same number of samples; None otherwise."""
    path = os.path.join(out_dir, ROWS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = {r["run"]: r for r in map(json.loads, f)}
    row = rows.get(workdir.rstrip("/"))
    if row is None:
        return None
    steps = run_config.checkpoint_steps(workdir)
    if "skipped" in row:
        return row
    if not steps or steps[0] != row.get("steps") or row.get("num_samples") != num or "grid_levels" not in row:
        return None
    return row


def sample_figure(path: str, rows: list, num_levels: int = 17):
    """samples.png: the first GRID_SAMPLES samples of every measured run, one panel
    each, titled with the run, its family and test NLL (dark = high level)."""
    from experiments import plots
    import matplotlib.pyplot as plt

    shown = [r for r in rows if "grid_levels" in r]
    cols = min(4, len(shown))
    fig_rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(fig_rows, cols, figsize=(3 * cols, 3.3 * fig_rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    side = int(math.sqrt(GRID_SAMPLES))
    for ax, r in zip(axes.ravel(), shown):
        levels = np.asarray(r["grid_levels"])[..., None]
        grid = np.asarray(images_lib.image_grid(levels, nrow=side, pad_value=num_levels - 1))
        ax.imshow(grid[..., 0], cmap="gray_r", vmin=0, vmax=num_levels - 1)
        nll = "no NLL" if r["nll_kind"] == "none" else f"NLL {r['nll_nats']:.1f} ({r['nll_kind']})"
        ax.set_title(f"{os.path.basename(r['run'])}\n{r['family']}, {nll}, FD {r['fd']:.1f}", fontsize=8)
    fig.suptitle(f"first {GRID_SAMPLES} samples of each run, with its config's sampler and weights (eval.params)")
    plots.save(fig, path)
    return path


def compare(workdirs, out_dir: str, *, num: int = DEFAULT_NUM, repeats: int = 3, reuse: bool = False,
            say=print) -> dict:
    """Evaluates every run (`evaluate_run`), writes compare.md and compare.json to
    out_dir and returns {"rows", "markdown", "fd_floor", "machine"}. Each row is
    also kept in out_dir/rows.jsonl as it is measured; with `reuse`, a run whose
    newest checkpoint is the step of its kept row (same number of samples) is not
    measured again."""
    from experiments import classifier

    rows, clf = [], None
    for workdir in workdirs:
        cached = cached_row(out_dir, workdir, num) if reuse else None
        if cached is not None:
            say(f"{workdir}: the row measured at step {cached.get('steps')} (compare.json of {out_dir})")
            rows.append(cached)
            continue
        if clf is None:
            config = run_config_of(workdir)
            if config.get("eval", {}).get("classifier_dir"):
                clf = classifier.load_or_train(config.eval.classifier_dir)
        rows.append(evaluate_run(workdir, num=num, repeats=repeats, classifier_params=clf, say=say))
        _save_rows(out_dir, rows)
    floor_fd = None
    if clf is not None:
        train_int, _ = datasets.load_digits("train")
        test_int, _ = datasets.load_digits("test")
        floor_fd = classifier.frechet_distance_to(clf, train_int, test_int)
    machine = machine_description()
    table = markdown(rows, num=num, floor_fd=floor_fd, machine=machine)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(table)
    if any("grid_levels" in r for r in rows):
        say(f"wrote {sample_figure(os.path.join(out_dir, 'samples.png'), rows)}")
    result = {"rows": rows, "fd_floor": floor_fd, "fd_floor_reference": FD_FLOOR, "num_samples": num,
              "repeats": repeats, "machine": machine,
              "memorization": {"neighbours": metrics_lib.MEMORIZATION_NEIGHBOURS,
                               "threshold": metrics_lib.MEMORIZATION_THRESHOLD}}
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(result, f, indent=2)
    return {**result, "markdown": table}


def main(argv):
    del argv
    workdirs = find_runs(_RUNS.value, _RUNS_DIR.value)
    out = flags.FLAGS.out or os.path.join(_RUNS_DIR.value or "runs", "compare")
    result = compare(workdirs, out, num=flags.FLAGS.num or DEFAULT_NUM, repeats=_REPEATS.value,
                     reuse=_REUSE.value)
    print(result["markdown"])
    print(f"wrote {os.path.join(out, 'compare.md')}, {os.path.join(out, 'compare.json')}")


if __name__ == "__main__":
    main_lib.run(main)
