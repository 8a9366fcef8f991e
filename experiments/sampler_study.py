r"""Sample quality against the number of function evaluations (NFE), for every sampler.

    python -m experiments.sampler_study --problem=mix64d [--num=2000] \
        [--nfes=5,10,20,50,100,1000] [--out=runs/sampler_study]
    python -m experiments.sampler_study --problem=digits --config=configs/base_digits.py \
        --workdir=RUN [--config.model.channels=...] [--num=256] [--out=RUN]

Every sampler starts from the same initial noise x_init and, where it is stochastic,
draws its noise from the same key. Two numbers per (sampler, NFE):

  * deterministic samplers: the relative RMS error ||x - x_ref|| / ||x_ref|| against
    the probability-flow ODE solved adaptively (Tsit5, rtol = atol = 1e-6 on mix64d,
    1e-5 on digits) from the same x_init down to the same eps, so the error is the
    solver's own. Every sampler here stops at t = eps (no final denoising step)
    except DDPM's ancestral sampler, which ends with the denoised x_0;
  * every sampler: a distribution metric. mix64d: the sliced Wasserstein distance
    (SWD) to exact mixture samples, with the SWD between two exact sample sets as the
    floor. digits: the classifier Fréchet distance (FD) to the test split
    (`ImageSource.sample_quality`), with the FD of as many train images as the floor.
    Both metrics fluctuate from one sample set to the next (SWD between exact sets
    of 2000 in 64-D: 0.035 to 0.066), so the floor is the mean and std over
    FLOOR_SETS independent data sets: differences within that spread are noise.
    The deterministic samplers share x_init, so their metrics converge to the
    reference's value rather than scatter.

Problems:
  mix64d  5 isotropic Gaussians in 64-D (means N(0, I), stds U(0.3, 1), weights 1..5,
          numpy seed 0; as in benchmarks/sampler_oracle.py), VP SDE, exact score.
  digits  a trained run (`experiments.main`), its EMA parameters and its SDE.

Samplers (SAMPLERS) and their NFE for a target budget N (never above N):
  euler, heun_pf      the probability-flow ODE with fixed uniform steps in t
                      (`ode_sample`, method "euler" / "heun"): N steps / N // 2 steps,
                      one / two NFE per step
  ddim                DDIM, eta = 0 (N steps)
  dpm_solver_2, _3    multistep DPM-Solver++ 2M / 3M (N steps)
  edm_heun            EDM's Heun sampler, (N + 1) // 2 steps, 2 steps - 1 NFE
  ancestral           DDPM's ancestral sampler on t_i = i / N (stochastic)
  euler_maruyama      the reverse SDE, Euler-Maruyama with N uniform steps (stochastic)
  ddim_eta1           DDIM with eta = 1 (stochastic)
DDIM, DPM-Solver++ and EDM Heun share one time grid (--discretization, log-SNR by
default). The NFE is counted as the samplers run (a host callback in the score
function) and checked against the formula.

Writes <out>/sampler_study_<problem>.{json,md,png} and prints the markdown table.
"""
import functools
import json
import math
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import main as main_lib  # defines --config and --workdir, reused here
from genjax import metrics as metrics_lib
from genjax.diffusion import ddpm, samplers, solvers
from genjax.diffusion.sde import SDE

DEFAULT_NFES = (5, 10, 20, 50, 100, 1000)
PROBLEMS = ("mix64d", "digits")
DEFAULT_NUM = {"mix64d": 2000, "digits": 256}
REFERENCE_TOL = {"mix64d": 1e-6, "digits": 1e-5}
X_INIT_KEY, SAMPLER_KEY = 0, 1
FLOOR_SETS = 5


# ---- samplers ---------------------------------------------------------------------------


class SamplerSpec(NamedTuple):
    """How one named sampler spends a budget of NFE.

    fn: a genjax sampler (key, sde, score_fn, shape, ..., x_init=) -> x
    steps: target NFE -> num_steps; nfe: num_steps -> score evaluations
    kwargs: (num_steps, eps, discretization) -> the sampler's keyword arguments
    """

    fn: Callable
    deterministic: bool
    steps: Callable
    nfe: Callable
    kwargs: Callable


def _grid_kwargs(**fixed):
    return lambda n, eps, disc: dict(num_steps=n, eps=eps, discretization=disc, **fixed)


def _pf_ode_sample(*args, **kwargs):
    """`samplers.ode_sample` without its NFE (here the counter and `SamplerSpec.nfe` count)."""
    x, _ = samplers.ode_sample(*args, **kwargs)
    return x


_same = lambda n: n
SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(_pf_ode_sample, True, _same, _same,
                         lambda n, eps, disc: dict(method="euler", num_steps=n, eps=eps)),
    "heun_pf": SamplerSpec(_pf_ode_sample, True, lambda n: max(1, n // 2), lambda k: 2 * k,
                           lambda n, eps, disc: dict(method="heun", num_steps=n, eps=eps)),
    "ddim": SamplerSpec(solvers.ddim_sample, True, _same, functools.partial(solvers.nfe, "ddim"),
                        _grid_kwargs(eta=0.0)),
    "dpm_solver_2": SamplerSpec(solvers.dpm_solver_sample, True, _same,
                                functools.partial(solvers.nfe, "dpm_solver"), _grid_kwargs(order=2)),
    "dpm_solver_3": SamplerSpec(solvers.dpm_solver_sample, True, _same,
                                functools.partial(solvers.nfe, "dpm_solver"), _grid_kwargs(order=3)),
    "edm_heun": SamplerSpec(solvers.edm_heun_sample, True, lambda n: (n + 1) // 2,
                            functools.partial(solvers.nfe, "edm_heun"), _grid_kwargs()),
    "ancestral": SamplerSpec(ddpm.ancestral_sample, False, _same, _same,
                             lambda n, eps, disc: dict(num_steps=n)),
    "euler_maruyama": SamplerSpec(samplers.pc_sample, False, _same, _same,
                                  lambda n, eps, disc: dict(num_steps=n, predictor="euler_maruyama",
                                                            eps=eps)),
    "ddim_eta1": SamplerSpec(solvers.ddim_sample, False, _same, functools.partial(solvers.nfe, "ddim"),
                             _grid_kwargs(eta=1.0)),
}


def steps_and_nfe(name: str, target_nfe: int) -> tuple[int, int]:
    """(num_steps, NFE) of sampler `name` for a budget of target_nfe evaluations."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {list(SAMPLERS)}")
    if not isinstance(target_nfe, int) or target_nfe < 1:
        raise ValueError(f"target NFE must be an int >= 1, got {target_nfe!r}")
    spec = SAMPLERS[name]
    steps = spec.steps(target_nfe)
    return steps, spec.nfe(steps)


class NFECounter:
    """Counts score evaluations as they run: `wrap(score_fn)` calls a host callback on
    every evaluation, also inside jit, scan and diffrax's loops (unlike a Python
    counter, which would count traces)."""

    def __init__(self):
        self.count = 0

    def _tick(self):
        self.count += 1

    def wrap(self, score_fn: Callable) -> Callable:
        def counted(x, t):
            jax.debug.callback(self._tick)
            return score_fn(x, t)

        return counted

    def read(self) -> int:
        jax.effects_barrier()  # callbacks of finished computations have all run
        return self.count


# ---- problems ---------------------------------------------------------------------------


class Problem(NamedTuple):
    """What the study runs on.

    score_of(params) -> score_fn(x, t); params: the pytree handed to it (jit argument).
    quality(samples) -> the distribution metric (float); floor, floor_std: its mean and
    std over FLOOR_SETS data sets of the same size.
    labels: the class labels the samples are drawn for (conditional models), else None.
    """

    name: str
    sde: SDE
    params: object
    score_of: Callable
    x_init: jax.Array
    eps: float
    ref_tol: float
    metric: str
    quality: Callable
    floor: float
    floor_std: float
    labels: object = None


def mix64d_mixture():
    """The 64-D mixture of benchmarks/sampler_oracle.py (numpy seed 0)."""
    from genjax.data.toy2d import GaussianMixture

    rng = np.random.RandomState(0)
    return GaussianMixture.isotropic(rng.randn(5, 64), rng.uniform(0.3, 1.0, 5), np.arange(1, 6))


def mix64d_problem(num: int = DEFAULT_NUM["mix64d"], *, eps: float = 1e-3) -> Problem:
    """VP SDE on the 64-D mixture with its exact score; quality by SWD to exact samples."""
    from genjax.data.toy2d import exact_score_fn
    from genjax.diffusion import sde as sde_lib

    mixture = mix64d_mixture()
    sde = sde_lib.VPSDE()
    exact = mixture.sample(jax.random.PRNGKey(2), num)
    swd = jax.jit(lambda x: metrics_lib.sliced_wasserstein(jax.random.PRNGKey(4), x, exact))
    floors = [float(swd(mixture.sample(jax.random.PRNGKey(100 + i), num))) for i in range(FLOOR_SETS)]
    return Problem(
        name="mix64d", sde=sde, params=mixture,
        score_of=lambda m: exact_score_fn(sde, m),
        x_init=sde.prior_sample(jax.random.PRNGKey(X_INIT_KEY), (num, mixture.dim)),
        eps=eps, ref_tol=REFERENCE_TOL["mix64d"], metric="SWD",
        quality=lambda x: float(swd(jnp.asarray(x))),
        floor=float(np.mean(floors)), floor_std=float(np.std(floors)))


def digits_score_of(config, source):
    """(sde, params -> score function) exactly as `make_diffusion_model` samples with
    (guidance 0), so samplers can be called with any of their keywords
    (model.sample's `method` hides ode_sample's)."""
    from experiments import registry
    from genjax.diffusion.model import make_score_fn

    sde, net = registry.build_sde_and_net(config, source)
    score_fn_of = make_score_fn(sde, net, prediction=config.model.get("prediction", "eps"),
                                num_classes=source.num_classes)
    return sde, lambda params, labels=None: score_fn_of(params, labels)


def digits_problem(config, workdir: str, num: int = DEFAULT_NUM["digits"]) -> Problem:
    """A trained digits run's EMA model; quality by the classifier FD to the test split.

    Checks that the rebuilt score function samples exactly as `model.sample` does.
    """
    from experiments import classifier, datasets

    exp, state = main_lib._restore(config, workdir)
    source = exp.source
    sde, score_of = digits_score_of(config, source)
    labels = None
    if source.num_classes is not None:
        labels = jnp.arange(num, dtype=jnp.int32) % source.num_classes
    eps = float(config.sample.eps)
    x_init = sde.prior_sample(jax.random.PRNGKey(X_INIT_KEY), (num,) + tuple(source.data_shape))
    params = state.ema_params

    k = min(num, 8)
    key = jax.random.PRNGKey(SAMPLER_KEY)
    via_model = exp.model.sample(params, key, k, method="ddim", num_steps=3, eta=1.0, eps=eps,
                                 labels=None if labels is None else labels[:k], x_init=x_init[:k])
    sub_labels = None if labels is None else labels[:k]
    via_score = solvers.ddim_sample(key, sde, score_of(params, sub_labels), x_init[:k].shape, 3, 1.0,
                                    x_init=x_init[:k], eps=eps)
    gap = float(jnp.max(jnp.abs(via_model - via_score)))
    if not gap <= 1e-5:
        raise RuntimeError(f"the rebuilt score function samples differently from model.sample "
                           f"(max |difference| {gap:.3g}); the study would not measure the model")

    np_labels = None if labels is None else np.asarray(labels)
    clf = classifier.load_or_train(config.eval.classifier_dir)
    train_int, _ = datasets.load_digits("train")
    test_int, _ = datasets.load_digits("test")
    # features once; each floor set is a random subset of the train images
    train_feat, _ = classifier.features_and_predictions(clf, train_int)
    test_feat, _ = classifier.features_and_predictions(clf, test_int)
    frechet = jax.jit(metrics_lib.frechet_distance)
    rng = np.random.default_rng(0)
    floors = []
    for _ in range(FLOOR_SETS):
        subset = rng.choice(len(train_int), min(num, len(train_int)), replace=False)
        floors.append(float(frechet(train_feat[subset], test_feat)))
    return Problem(
        name="digits", sde=sde, params=params,
        score_of=lambda p: score_of(p, labels),
        x_init=x_init, eps=eps, ref_tol=REFERENCE_TOL["digits"], metric="FD",
        quality=lambda x: source.sample_quality(np.asarray(x), np_labels)["frechet_distance"],
        floor=float(np.mean(floors)), floor_std=float(np.std(floors)), labels=np_labels)


# ---- the study ----------------------------------------------------------------------------


def relative_rms(x, x_ref) -> float:
    """||x - x_ref|| / ||x_ref|| over all samples and coordinates."""
    x, x_ref = np.asarray(x, np.float64), np.asarray(x_ref, np.float64)
    return float(np.sqrt(np.sum((x - x_ref) ** 2) / np.sum(x_ref**2)))


def make_sampler(problem: Problem, name: str, target_nfe: int, *, discretization: str = "logsnr",
                 counter: NFECounter | None = None):
    """(fn(params, x_init) -> samples, num_steps, NFE) for sampler `name` on `problem`."""
    steps, nfe = steps_and_nfe(name, target_nfe)
    spec = SAMPLERS[name]
    kwargs = spec.kwargs(steps, problem.eps, discretization)

    def fn(params, x_init):
        score_fn = problem.score_of(params)
        if counter is not None:
            score_fn = counter.wrap(score_fn)
        key = jax.random.PRNGKey(SAMPLER_KEY)
        return spec.fn(key, problem.sde, score_fn, x_init.shape, x_init=x_init, **kwargs)

    return fn, steps, nfe


def reference_fn(problem: Problem, counter: NFECounter | None = None):
    """fn(params, x_init) -> (x_eps, nfe): the adaptive probability-flow ODE at ref_tol."""

    def fn(params, x_init):
        score_fn = problem.score_of(params)
        if counter is not None:
            score_fn = counter.wrap(score_fn)
        return samplers.ode_sample(None, problem.sde, score_fn, x_init.shape, rtol=problem.ref_tol,
                                   atol=problem.ref_tol, eps=problem.eps, x_init=x_init)

    return fn


def _compile_and_run(fn, problem):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(problem.params, problem.x_init).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(problem.params, problem.x_init))
    return out, t1 - t0, time.perf_counter() - t1


def _finite_or_none(v):
    return None if v is None or not math.isfinite(v) else v


def run_study(problem: Problem, nfes=DEFAULT_NFES, sampler_names=tuple(SAMPLERS), *,
              discretization: str = "logsnr", count_nfe: bool = True, log=print) -> dict:
    """Runs every (sampler, target NFE) once (one compilation each) and returns
    {"problem", "metric", "floor", "floor_std", "reference": {...}, "nfes", "rows": {name: [row]}},
    row = {target_nfe, nfe, nfe_counted (None without count_nfe), num_steps,
    rel_rms (None if stochastic), metric, compile_s, run_s}.
    Raises RuntimeError if a counted NFE differs from the formula."""
    nfes = tuple(int(n) for n in nfes)
    unknown = [s for s in sampler_names if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; expected some of {list(SAMPLERS)}")
    counter = NFECounter() if count_nfe else None
    (x_ref, ref_nfe), compile_s, run_s = _compile_and_run(reference_fn(problem, counter), problem)
    ref_counted = counter.read() if counter else None
    reference = {"method": "adaptive Tsit5", "tol": problem.ref_tol, "eps": problem.eps,
                 "nfe": int(ref_nfe), "nfe_counted": ref_counted,
                 "metric": _finite_or_none(problem.quality(x_ref)),
                 "compile_s": compile_s, "run_s": run_s}
    log(f"reference: adaptive ODE at tol {problem.ref_tol:g}, NFE {int(ref_nfe)}"
        + (f" (counted {ref_counted})" if counter else "")
        + f", {problem.metric} {reference['metric']}, compile {compile_s:.1f} s, run {run_s:.1f} s")
    rows = {}
    for name in sampler_names:
        rows[name] = []
        for target in nfes:
            fn, steps, nfe = make_sampler(problem, name, target, discretization=discretization,
                                          counter=counter)
            if counter:
                counter.count = 0
            x, compile_s, run_s = _compile_and_run(fn, problem)
            counted = None
            if counter:
                counted = counter.read()
                if counted != nfe:
                    raise RuntimeError(f"{name} at {steps} steps evaluated the score {counted} times; "
                                       f"the formula says {nfe}")
            rel = relative_rms(x, x_ref) if SAMPLERS[name].deterministic else None
            row = {"target_nfe": target, "nfe": nfe, "nfe_counted": counted, "num_steps": steps,
                   "rel_rms": _finite_or_none(rel), "metric": _finite_or_none(problem.quality(x)),
                   "compile_s": compile_s, "run_s": run_s}
            rows[name].append(row)
            rel_text = "-" if rel is None else f"{rel:.3e}"
            log(f"{name:>15} NFE {nfe:>5}: rel-RMS {rel_text}, {problem.metric} {row['metric']}, "
                f"compile {compile_s:.1f} s, run {run_s:.2f} s")
    return {"problem": problem.name, "metric": problem.metric, "floor": problem.floor,
            "floor_std": problem.floor_std,
            "num": int(problem.x_init.shape[0]), "discretization": discretization,
            "reference": reference, "nfes": list(nfes), "rows": rows}


def _fmt(v, spec):
    return "nan" if v is None else format(v, spec)


def markdown_table(result: dict) -> str:
    """Rows: samplers; columns: target NFE; cells 'rel-RMS / metric' ('— / metric' for
    stochastic samplers), '(n)' the actual NFE where it differs from the column's."""
    metric, nfes = result["metric"], result["nfes"]
    lines = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for name, rows in result["rows"].items():
        cells = []
        for row in rows:
            rel = "—" if not SAMPLERS[name].deterministic else _fmt(row["rel_rms"], ".2e")
            cell = f"{rel} / {_fmt(row['metric'], '.3g')}"
            if row["nfe"] != row["target_nfe"]:
                cell += f" ({row['nfe']})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = result["reference"]
    floor_what = ("exact mixture samples" if result["problem"] == "mix64d"
                  else "random train images vs the test split")
    lines += ["",
              f"Cells: relative RMS error against the reference / {metric}; (n): actual NFE where it "
              f"differs from the column's. {result['num']} samples, time grid of the fast solvers: "
              f"{result['discretization']}.",
              f"{metric} floor ({floor_what}, same number of samples; mean ± std over "
              f"{FLOOR_SETS} sets): {result['floor']:.3g} ± {result['floor_std']:.2g}. "
              f"Reference: probability-flow ODE, {ref['method']} at rtol = atol = {ref['tol']:g} "
              f"to eps = {ref['eps']:g}, NFE {ref['nfe']}, {metric} {_fmt(ref['metric'], '.3g')}."]
    return "\n".join(lines)


def plot_study(result: dict, path: str) -> None:
    """Two panels: relative RMS error vs NFE (log-log, deterministic samplers) and the
    distribution metric vs NFE, one line per sampler, floor and reference dashed."""
    from experiments import plots  # noqa: F401  (selects the headless backend)
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_q) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in result["rows"].items():
        style = "-o" if SAMPLERS[name].deterministic else "--s"
        if SAMPLERS[name].deterministic:
            pts = [(r["nfe"], r["rel_rms"]) for r in rows if r["rel_rms"] is not None and r["rel_rms"] > 0]
            if pts:
                ax_err.plot(*zip(*pts), style, ms=3, label=name)
        pts = [(r["nfe"], r["metric"]) for r in rows if r["metric"] is not None and r["metric"] > 0]
        if pts:
            ax_q.plot(*zip(*pts), style, ms=3, label=name)
    ax_q.axhline(result["floor"], color="k", ls=":", lw=1, label="floor (data), ± std")
    ax_q.axhspan(result["floor"] - result["floor_std"], result["floor"] + result["floor_std"],
                 color="k", alpha=0.08)
    if result["reference"]["metric"]:
        ax_q.axhline(result["reference"]["metric"], color="grey", ls="-.", lw=1, label="adaptive ODE")
    ax_err.set(xscale="log", yscale="log", xlabel="NFE", ylabel="relative RMS error vs reference",
               title="deterministic samplers")
    ax_q.set(xscale="log", yscale="log", xlabel="NFE", ylabel=result["metric"],
             title=f"{result['metric']} to data ({result['problem']})")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in (ax_err, ax_q):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(result["nfes"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax_q.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: dict, out_dir: str) -> dict:
    """Writes sampler_study_<problem>.{json,md,png}; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"sampler_study_{result['problem']}")
    paths = {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=2)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(result) + "\n")
    plot_study(result, paths["png"])
    return paths


# ---- command line -------------------------------------------------------------------------

main_lib.define_num("Samples per sampler (default: the problem's).")
flags.declare_key_flag("config")
flags.declare_key_flag("workdir")
flags.declare_key_flag("verbose")
flags.declare_key_flag("num")
_PROBLEM = flags.DEFINE_enum("problem", "mix64d", list(PROBLEMS),
                             "mix64d (exact score) or digits (a trained run).")
_NFES = flags.DEFINE_string("nfes", ",".join(map(str, DEFAULT_NFES)), "Comma-separated target NFEs.")
main_lib.define_path_flag("out")  # default: the workdir; runs/sampler_study for mix64d
flags.declare_key_flag("out")
_SAMPLER_NAMES = flags.DEFINE_list("samplers", list(SAMPLERS), "Samplers to run.")
_DISCRETIZATION = flags.DEFINE_enum("discretization", "logsnr", list(solvers.DISCRETIZATIONS),
                                    "Time grid of DDIM, DPM-Solver++ and EDM Heun.")


def _parse_nfes(text: str):
    try:
        nfes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--nfes must be comma-separated integers, got {text!r}") from None
    if not nfes or min(nfes) < 1:
        raise ValueError(f"--nfes must list integers >= 1, got {text!r}")
    return nfes


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    problem_name = _PROBLEM.value
    num = flags.FLAGS.num or DEFAULT_NUM[problem_name]
    nfes = _parse_nfes(_NFES.value)
    t0 = time.perf_counter()
    if problem_name == "mix64d":
        problem = mix64d_problem(num)
        out = flags.FLAGS.out or os.path.join("runs", "sampler_study")
    else:
        workdir = main_lib._WORKDIR.value
        if workdir is None:
            raise app.UsageError("--problem=digits needs --workdir of a trained run")
        config = main_lib.trained_config(workdir)
        problem = digits_problem(config, workdir, num)
        out = flags.FLAGS.out or workdir
    print(f"{problem_name}: {num} samples, NFEs {list(nfes)}, {problem.metric} floor "
          f"{problem.floor:.4g} ± {problem.floor_std:.2g} "
          f"(set-up {time.perf_counter() - t0:.1f} s)", flush=True)
    result = run_study(problem, nfes, tuple(_SAMPLER_NAMES.value), discretization=_DISCRETIZATION.value,
                       log=lambda s: print(s, flush=True))
    result["seconds"] = time.perf_counter() - t0
    paths = write_outputs(result, out)
    print()
    print(markdown_table(result))
    print(f"\ntotal {result['seconds']:.0f} s; wrote {', '.join(paths.values())}")


def run():
    """`experiments.main.run` with --config and --workdir optional (the mix64d
    problem needs neither)."""
    main_lib.run(main, required=())


if __name__ == "__main__":
    run()
