"""Scaling study: a sweep of transformer LM sizes x token budgets, and fitted laws.

    python -m experiments.scaling --workdir=runs/scaling [--config=configs/scaling_stdlib.py]
        [--fit-only] [--config.fit.grid=small ...]

Trains one byte-level LM per (size, token budget) of the config on the stdlib
corpus (`experiments.text_corpus`), each from scratch with its own warmup + cosine
schedule sized to its budget, and records per run:

  N    non-embedding parameters (Kaplan et al. 2020 convention: token, position and
       unembedding matrices excluded); N_total counts them too;
  D    training tokens (bytes) = steps x batch x seq_len;
  C    6 N D training FLOPs (Kaplan et al. 2020, section 2.1), the compute every fit
       uses; C_attn adds the attention term 6 n_layer n_ctx d_model per token
       (their Table 1), recorded for comparison;
  loss final validation loss in nats per byte (= nats per token: the vocabulary is
       bytes), on `data.eval_windows` evenly spaced windows of the validation files.

The results json in the workdir is rewritten atomically after every run; a run
already recorded there with the same settings is skipped, so an interrupted sweep
resumes where it stopped. Then it fits (genjax.scaling):
  * the Chinchilla law L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022,
    approach 3), with percentile bootstrap intervals over resampled runs;
  * Kaplan power laws L(N) = (N_c/N)^alpha_N at the largest D, L(D) at the largest
    N (each also with an offset E), and L(C) on the compute envelope (the runs no
    cheaper run beats);
  * the compute-optimal frontier N_opt(C) ~ C^a, D_opt(C) ~ C^b of the fitted law;
and writes results.json, results.md, loss_vs_compute.png and frontier.png.
--fit-only skips training and refits the recorded runs.
"""
import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import configuration, plots, run_config, run_loop  # plots sets the headless backend
from experiments.logging import write_atomically
from experiments.text_corpus import read_stdlib_corpus
from genjax import scaling
from genjax import train as train_lib
from genjax.autoregressive.lm import make_lm
from genjax.data import text
from genjax.nn.transformer import Transformer

import matplotlib.pyplot as plt  # noqa: E402  (after experiments.plots chose Agg)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "scaling_stdlib.py")
RESULTS = "results.json"
UNITS = {
    "N": "non-embedding parameters (Kaplan et al. 2020)",
    "N_total": "all parameters, embeddings included",
    "D": "training tokens (bytes)",
    "C": "6 N D training FLOPs",
    "C_attn": "(6 N + 6 n_layer n_ctx d_model) D training FLOPs (Kaplan et al. 2020, Table 1)",
    "loss": "validation nats per byte",
}
GRIDS = {
    "paper": scaling.init_grid,
    "small": lambda: scaling.init_grid(alphas=(0.5,), betas=(0.5,), es=(0.0,),
                                       a_s=(0.0, 10.0), b_s=(0.0, 10.0)),
}

_FLAGS = {}  # defined by run(), so importing this module (tests) defines no absl flags


def _define_flags():
    _FLAGS["config"] = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Path to a scaling config.")
    _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for results.json, results.md and plots.")
    _FLAGS["fit_only"] = flags.DEFINE_bool("fit_only", False, "Refit the runs recorded in the workdir; train nothing.")


# ----------------------------------------------------------------------------- runs

def run_specs(config) -> list[dict]:
    """One dict per (size, budget), smallest compute first: everything a run depends on."""
    B, T = config.data.batch_size, config.data.seq_len
    tokens_per_step = B * T
    specs = []
    for num_layers, d_model, num_heads in config.model.sizes:
        if d_model % num_heads:
            raise ValueError(f"model size (layers={num_layers}, d_model={d_model}, heads={num_heads}): "
                             f"d_model must be a multiple of num_heads")
        for tokens in config.train.tokens:
            if tokens <= 0 or tokens % tokens_per_step:
                raise ValueError(f"train.tokens holds {tokens}; expected a positive multiple of "
                                 f"batch_size * seq_len = {tokens_per_step}")
            steps = tokens // tokens_per_step
            specs.append({
                "name": f"L{num_layers}_d{d_model}_D{tokens}",
                "num_layers": int(num_layers), "d_model": int(d_model), "num_heads": int(num_heads),
                "tokens": int(tokens), "steps": int(steps), "batch_size": int(B), "seq_len": int(T),
                "warmup_steps": int(round(config.train.warmup_fraction * steps)),
                "learning_rate": float(config.optim.learning_rate),
                "end_fraction": float(config.optim.end_fraction), "b2": float(config.optim.b2),
                "grad_clip": float(config.optim.grad_clip), "weight_decay": float(config.optim.weight_decay),
                "eval_windows": int(config.data.eval_windows), "seed": int(config.seed),
            })
    return sorted(specs, key=lambda s: _lm_net(s).num_params(non_embedding=True) * s["tokens"])


def _lm_kwargs(spec: dict) -> dict:
    return dict(vocab_size=text.VOCAB_SIZE, num_layers=spec["num_layers"], d_model=spec["d_model"],
                num_heads=spec["num_heads"], max_len=spec["seq_len"])


def _lm_net(spec: dict) -> Transformer:
    return Transformer(**_lm_kwargs(spec))


def validation_windows(tokens_T, seq_len: int, num: int) -> np.ndarray:
    """`num` evenly spaced windows (num, seq_len + 1) of the consecutive tiling of the stream."""
    windows = text.eval_windows(tokens_T, seq_len)
    if num > windows.shape[0]:
        raise ValueError(f"data.eval_windows is {num}; the validation split has only "
                         f"{windows.shape[0]} windows of {seq_len + 1} tokens")
    return windows[np.linspace(0, windows.shape[0] - 1, num).astype(int)]


@functools.lru_cache(maxsize=None)
def _nll_fn(lm_items: tuple):
    """jit(-log_prob) of one model size, compiled once for all of that size's runs."""
    model = make_lm(**dict(lm_items))
    return jax.jit(lambda params, windows: -model.log_prob(params, None, {"tokens": windows}))


def evaluate(spec: dict, params, windows, chunk: int = 256) -> float:
    """Mean nats per token over all windows, from the exact log-likelihood of each."""
    nll_fn = _nll_fn(tuple(sorted(_lm_kwargs(spec).items())))
    total = 0.0
    for start in range(0, windows.shape[0], chunk):
        part = windows[start:start + chunk]
        real = part.shape[0]
        if real < chunk and windows.shape[0] > chunk:
            # Every call the same shape (one compile): pad with copies, sum the real ones.
            part = np.concatenate([part, windows[:chunk - real]])
        total += float(np.sum(np.asarray(nll_fn(params, jnp.asarray(part)), np.float64)[:real]))
    return total / (windows.shape[0] * (windows.shape[1] - 1))


def train_run(spec: dict, train_tokens, val_windows, *, steps_per_call: int, log=print) -> dict:
    """Trains one run from scratch and returns its record (N, D, C, losses, time)."""
    model = make_lm(**_lm_kwargs(spec))
    net = _lm_net(spec)
    tx, lr_fn = train_lib.make_optimizer(
        learning_rate=spec["learning_rate"], total_steps=spec["steps"], warmup_steps=spec["warmup_steps"],
        schedule="cosine", end_fraction=spec["end_fraction"], grad_clip=spec["grad_clip"] or None,
        weight_decay=spec["weight_decay"], b2=spec["b2"])
    B, T = spec["batch_size"], spec["seq_len"]
    chunk = math.gcd(spec["steps"], steps_per_call)
    train_tokens = jnp.asarray(train_tokens)

    def train_chunk(state, tokens_T):
        # The stream is an argument, not a constant baked into the program.
        batch_fn = lambda key, step: text.get_batch(tokens_T, key, step, B, T)
        fn = train_lib.make_train_fn(model.loss, tx, steps_per_call=chunk, batch_fn=batch_fn,
                                     learning_rate_fn=lr_fn)
        return fn(state)

    step_fn = jax.jit(train_chunk, donate_argnums=0)
    key = jax.random.key(spec["seed"])
    example = text.get_batch(train_tokens, key, 0, B, T)
    state = train_lib.init_state(model.init, tx, key, example)
    t0 = time.perf_counter()

    def log_call(step, metrics, seconds):
        log(f"  {spec['name']} step {step}/{spec['steps']} loss {metrics['loss'][-1]:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")

    # Unplaced (the default device), as the recorded runs were trained.
    state, metrics = run_loop.run(state, lambda mesh: lambda state: step_fn(state, train_tokens),
                                  num_steps=spec["steps"], steps_per_call=chunk, place=False,
                                  on_call=log_call)
    seconds = time.perf_counter() - t0
    losses = np.asarray(metrics["loss"])
    val_loss = evaluate(spec, state.params, val_windows)
    N = net.num_params(non_embedding=True)
    D = spec["steps"] * B * T
    return {
        "name": spec["name"], "spec": spec,
        "N": int(N), "N_total": int(net.num_params()), "D": int(D),
        "C": float(6.0 * N * D), "C_attn": float(net.flops_per_token(n_ctx=T) * D),
        "val_loss": float(val_loss), "val_bits_per_byte": float(val_loss / math.log(2.0)),
        "train_loss": float(losses[-max(1, losses.size // 20):].mean()),  # last 5% of steps
        "train_seconds": seconds,
    }


def load_results(workdir: str) -> dict:
    path = os.path.join(workdir, RESULTS)
    if not os.path.exists(path):
        return {"units": UNITS, "runs": []}
    with open(path) as f:
        return json.load(f)


def save_json_atomic(path: str, data) -> None:
    write_atomically(path, json.dumps(data, indent=1))


def sweep(config, workdir: str, *, corpus: dict | None = None, log=print) -> list[dict]:
    """Trains every run of the config not yet recorded in the workdir; returns all records.

    A recorded run counts only if its stored settings equal the config's, so a
    changed config retrains what it changed. `corpus` ({'train', 'validation'}
    uint8 arrays) defaults to the stdlib corpus.
    """
    os.makedirs(workdir, exist_ok=True)
    specs = run_specs(config)
    results = load_results(workdir)
    done = {r["name"]: r for r in results["runs"]}
    if corpus is None:
        corpus = read_stdlib_corpus()
    val_windows = validation_windows(corpus["validation"], config.data.seq_len, config.data.eval_windows)
    records = []
    for i, spec in enumerate(specs):
        old = done.get(spec["name"])
        if old is not None and old["spec"] == spec:
            log(f"[{i + 1}/{len(specs)}] {spec['name']}: recorded, skipped")
            records.append(old)
            continue
        log(f"[{i + 1}/{len(specs)}] {spec['name']}: {spec['steps']} steps")
        record = train_run(spec, corpus["train"], val_windows,
                           steps_per_call=config.train.steps_per_call, log=log)
        log(f"[{i + 1}/{len(specs)}] {spec['name']}: N={record['N']} D={record['D']} "
            f"C={record['C']:.3g} val {record['val_loss']:.4f} nats/byte ({record['train_seconds']:.0f} s)")
        records.append(record)
        done[spec["name"]] = record
        # Keep records of other configs' runs too: a later config may want them back.
        results["runs"] = list(done.values())
        results["units"] = UNITS
        save_json_atomic(os.path.join(workdir, RESULTS), results)
    return records


# ----------------------------------------------------------------------------- fits

def compute_envelope(C, L) -> np.ndarray:
    """Indices of the runs no cheaper run beats (lowest loss so far, in order of C)."""
    order = np.argsort(C, kind="stable")
    keep, best = [], np.inf
    for i in order:
        if L[i] < best:
            keep.append(i)
            best = L[i]
    return np.asarray(keep, dtype=int)


def _power_law_dict(x, L, offset: bool):
    fit = scaling.fit_power_law(x, L, offset=offset)
    return {"x_c": float(fit.x_c), "alpha": float(fit.alpha), "E": float(fit.E),
            "sse_log": float(fit.loss), "num_runs": int(len(x))}


def _kaplan(N, D, C, L) -> dict:
    out = {}
    at_D = np.flatnonzero(D == D.max())
    at_N = np.flatnonzero(N == N.max())
    env = compute_envelope(C, L)
    for name, x, idx, extra in (("L(N)", N, at_D, {"D": float(D.max())}),
                                ("L(D)", D, at_N, {"N": float(N.max())}),
                                ("L(C)", C, env, {"envelope": [int(i) for i in env]})):
        if len(np.unique(x[idx])) < 2:
            continue
        entry = {"pure": _power_law_dict(x[idx], L[idx], offset=False), **extra}
        if len(idx) >= 3:
            entry["offset"] = _power_law_dict(x[idx], L[idx], offset=True)
        out[name] = entry
    return out


def fit_records(records: list[dict], fit_config) -> dict:
    """Chinchilla fit + bootstrap, Kaplan power laws and the frontier, as plain floats."""
    N = np.asarray([r["N"] for r in records], np.float64)
    D = np.asarray([r["D"] for r in records], np.float64)
    L = np.asarray([r["val_loss"] for r in records], np.float64)
    C = 6.0 * N * D
    if fit_config.grid not in GRIDS:
        raise ValueError(f"fit.grid is {fit_config.grid!r}; expected one of {sorted(GRIDS)}")
    out = {"num_runs": len(records), "kaplan": _kaplan(N, D, C, L)}
    if len(records) < 5:
        out["chinchilla"] = None  # 5 parameters need at least 5 runs
        return out
    fit = scaling.fit_chinchilla(N, D, L, inits=GRIDS[fit_config.grid]())
    # Each refit starts near the fit (local_inits) and from the 4 'small' grid
    # points: from the fit alone a refit cannot leave a flat region (E -> 0 makes
    # the objective flat in log E), and E's interval would collapse to a point.
    boot_inits = jnp.concatenate([scaling.local_inits(fit), GRIDS["small"]()])
    boot = scaling.bootstrap_chinchilla(
        jax.random.key(fit_config.bootstrap_seed), N, D, L,
        num_samples=fit_config.bootstrap_samples, inits=boot_inits, level=fit_config.level)
    a, b = scaling.frontier_exponents(fit)
    point = {k: float(getattr(fit, k)) for k in ("E", "A", "B", "alpha", "beta")}
    point.update(a=float(a), b=float(b))
    pred = np.asarray(scaling.chinchilla_loss(fit, N, D), np.float64)
    C_grid = np.geomspace(C.min(), C.max(), 5)
    N_opt, D_opt = (np.asarray(v, np.float64) for v in scaling.compute_optimal(fit, C_grid))
    out["chinchilla"] = {
        "params": point,
        "low": {k: float(v) for k, v in boot.low.items()},
        "high": {k: float(v) for k, v in boot.high.items()},
        "level": float(fit_config.level), "bootstrap_samples": int(fit_config.bootstrap_samples),
        "grid": fit_config.grid, "huber_objective": float(fit.loss),
        "rms_log_residual": float(np.sqrt(np.mean((np.log(pred) - np.log(L)) ** 2))),
        # An irreducible loss below 0.1% of the best run's: the runs do not pin E down.
        "E_at_zero": bool(point["E"] < 1e-3 * L.min()),
        "samples": {k: np.asarray(getattr(boot.samples, k), np.float64).tolist()
                    for k in ("E", "A", "B", "alpha", "beta")},
    }
    out["frontier"] = {
        "a": float(a), "b": float(b),
        "C": C_grid.tolist(), "N_opt": N_opt.tolist(), "D_opt": D_opt.tolist(),
        "L_opt": np.asarray(scaling.chinchilla_loss(fit, N_opt, D_opt), np.float64).tolist(),
    }
    return out


def _law(params: dict, expand: bool = False):
    arr = lambda v: np.asarray(v, np.float64)[:, None] if expand else np.asarray(v, np.float64)
    return scaling.ChinchillaLaw(**{k: arr(params[k]) for k in ("E", "A", "B", "alpha", "beta")})


# ----------------------------------------------------------------------------- outputs

def _fmt_ci(fits: dict, name: str, digits: int = 3) -> str:
    ch = fits["chinchilla"]
    return (f"{ch['params'][name]:.{digits}g} [{ch['low'][name]:.{digits}g}, "
            f"{ch['high'][name]:.{digits}g}]")


def to_markdown(records: list[dict], fits: dict) -> str:
    lines = ["| run | layers x d_model | N (non-emb.) | N (all) | D tokens | C = 6ND | C with attn. "
             "| val loss (nats/byte) | val bits/byte | train loss | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["N"], r["D"])):
        s = r["spec"]
        lines.append(f"| {r['name']} | {s['num_layers']} x {s['d_model']} | {r['N']:,} | {r['N_total']:,} "
                     f"| {r['D']:,} | {r['C']:.3g} | {r['C_attn']:.3g} | {r['val_loss']:.4f} "
                     f"| {r['val_bits_per_byte']:.4f} | {r['train_loss']:.4f} | {r['train_seconds']:.0f} |")
    lines.append("")
    ch = fits.get("chinchilla")
    if ch:
        pct = round(100 * ch["level"])
        lines += [f"Chinchilla law L(N, D) = E + A/N^alpha + B/D^beta (Huber on log L, L-BFGS from the "
                  f"'{ch['grid']}' grid; {pct}% percentile bootstrap over {ch['bootstrap_samples']} "
                  "resamples of the runs):", "",
                  "| parameter | fit [CI] |", "|---|---|"]
        for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
            lines.append(f"| {name} | {_fmt_ci(fits, name)} |")
        lines += ["", f"Huber objective {ch['huber_objective']:.3g}; rms log-residual "
                      f"{ch['rms_log_residual']:.4f}.", ""]
        if ch.get("E_at_zero"):
            lines += ["E went to zero: these runs, all far above any irreducible loss, do not identify "
                      "E; the fitted law is a sum of two power laws.", ""]
        fr = fits["frontier"]
        lines += [f"Compute-optimal frontier (C = 6ND): N_opt ~ C^{fr['a']:.3f}, D_opt ~ C^{fr['b']:.3f}.", "",
                  "| C (FLOPs) | N_opt | D_opt | D_opt / N_opt | L_opt (nats/byte) |", "|---|---|---|---|---|"]
        for C, n, d, l in zip(fr["C"], fr["N_opt"], fr["D_opt"], fr["L_opt"]):
            lines.append(f"| {C:.3g} | {n:.3g} | {d:.3g} | {d / n:.3g} | {l:.4f} |")
        lines.append("")
    else:
        lines += [f"Chinchilla law: not fitted ({fits['num_runs']} runs; 5 parameters need at least 5).", ""]
    if fits["kaplan"]:
        lines += ["Kaplan power laws L(x) = (x_c/x)^alpha, and E + (x_c/x)^alpha (least squares on log L):", "",
                  "| law | runs | x_c | alpha | with offset: E | x_c | alpha |", "|---|---|---|---|---|---|---|"]
        where = {"L(N)": lambda e: f"at D = {e['D']:.3g}", "L(D)": lambda e: f"at N = {e['N']:.3g}",
                 "L(C)": lambda e: "compute envelope"}
        for name, e in fits["kaplan"].items():
            p, o = e["pure"], e.get("offset")
            off = f"{o['E']:.3g} | {o['x_c']:.3g} | {o['alpha']:.3g}" if o else "- | - | -"
            lines.append(f"| {name} {where[name](e)} | {p['num_runs']} | {p['x_c']:.3g} | {p['alpha']:.3g} | {off} |")
        lines.append("")
    return "\n".join(lines)


def plot_loss_vs_compute(path: str, records: list[dict], fits: dict) -> None:
    """Validation loss against C = 6ND, one colour per model size, with the fitted law."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = sorted({r["N"] for r in records})
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(sizes)))
    ch = fits.get("chinchilla")
    C_all = np.asarray([r["C"] for r in records])
    for N, color in zip(sizes, colors):
        rs = sorted((r for r in records if r["N"] == N), key=lambda r: r["D"])
        s = rs[0]["spec"]
        ax.plot([r["C"] for r in rs], [r["val_loss"] for r in rs], "o", color=color,
                label=f"N={N:,} ({s['num_layers']}x{s['d_model']})")
        if ch:
            C = np.geomspace(min(r["C"] for r in rs) / 2, max(r["C"] for r in rs) * 2, 50)
            ax.plot(C, scaling.chinchilla_loss(_law(ch["params"]), N, C / (6 * N)), "-", color=color, lw=1)
        else:
            ax.plot([r["C"] for r in rs], [r["val_loss"] for r in rs], "-", color=color, lw=1)
    if ch:
        C = np.geomspace(C_all.min() / 2, C_all.max() * 2, 50)
        N_opt, D_opt = scaling.compute_optimal(_law(ch["params"]), C)
        ax.plot(C, scaling.chinchilla_loss(_law(ch["params"]), N_opt, D_opt), "k--", lw=1,
                label="fitted law at N_opt(C)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title("loss vs compute; lines: fitted Chinchilla law" if ch else "loss vs compute")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(path: str, records: list[dict], fits: dict) -> None:
    """N_opt(C) and D_opt(C) of the fitted law, bootstrap band, and the sweep's runs."""
    ch = fits.get("chinchilla")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    C_runs = np.asarray([r["C"] for r in records])
    N_runs = np.asarray([r["N"] for r in records], np.float64)
    D_runs = np.asarray([r["D"] for r in records], np.float64)
    L_runs = np.asarray([r["val_loss"] for r in records])
    env = compute_envelope(C_runs, L_runs)
    C = np.geomspace(C_runs.min() / 10, C_runs.max() * 10, 60)
    if ch:
        N_opt, D_opt = (np.asarray(v) for v in scaling.compute_optimal(_law(ch["params"]), C))
        N_S, D_S = (np.asarray(v) for v in scaling.compute_optimal(_law(ch["samples"], expand=True), C[None]))
        lo, hi = (1 - ch["level"]) / 2, (1 + ch["level"]) / 2
    for ax, runs, name, idx in ((axes[0], N_runs, "N", 0), (axes[1], D_runs, "D", 1)):
        ax.plot(C_runs, runs, "o", color="0.7", label="sweep runs")
        ax.plot(C_runs[env], runs[env], "o", color="C1", label="compute envelope (best so far)")
        if ch:
            opt, samples = (N_opt, N_S) if idx == 0 else (D_opt, D_S)
            expo = fits["frontier"]["a" if idx == 0 else "b"]
            ax.plot(C, opt, "k-", label=f"{name}_opt ~ C^{expo:.2f}")
            with np.errstate(invalid="ignore"):
                band = np.nanquantile(np.where(np.isfinite(samples), samples, np.nan), [lo, hi], axis=0)
            ax.fill_between(C, band[0], band[1], color="k", alpha=0.15,
                            label=f"{round(100 * ch['level'])}% bootstrap band")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("C = 6ND (FLOPs)")
        ax.set_ylabel(f"{name}" + (" (non-embedding params)" if idx == 0 else " (tokens)"))
        ax.legend(fontsize=7)
    fig.suptitle("compute-optimal frontier of the fitted law")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(workdir: str, records: list[dict], fits: dict) -> str:
    """results.json (runs of this sweep + fits), results.md and both plots; returns the markdown."""
    results = load_results(workdir)
    names = {r["name"] for r in records}
    results["runs"] = records + [r for r in results["runs"] if r["name"] not in names]
    results["units"] = UNITS
    results["sweep"] = sorted(names)
    results["fits"] = fits
    save_json_atomic(os.path.join(workdir, RESULTS), results)
    table = to_markdown(records, fits)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    plot_loss_vs_compute(os.path.join(workdir, "loss_vs_compute.png"), records, fits)
    plot_frontier(os.path.join(workdir, "frontier.png"), records, fits)
    return table


def study(config, workdir: str, *, fit_only: bool = False, corpus: dict | None = None, log=print):
    """The whole study: sweep (unless fit_only), fits, outputs. Returns (records, fits, markdown)."""
    if fit_only:
        by_name = {r["name"]: r for r in load_results(workdir)["runs"]}
        specs = run_specs(config)
        records = [by_name[s["name"]] for s in specs if s["name"] in by_name and by_name[s["name"]]["spec"] == s]
        if not records:
            raise ValueError(f"no run of this config is recorded in {os.path.join(workdir, RESULTS)!r}; "
                             "run without --fit-only first")
        if len(records) < len(specs):
            log(f"fitting {len(records)} of the config's {len(specs)} runs (the rest are not recorded)")
    else:
        records = sweep(config, workdir, corpus=corpus, log=log)
    t0 = time.perf_counter()
    fits = fit_records(records, config.fit)
    log(f"fits done in {time.perf_counter() - t0:.0f} s")
    return records, fits, write_outputs(workdir, records, fits)


def main(argv):
    del argv
    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    configuration.validate(config)
    run_config.check_directory(workdir)
    t0 = time.perf_counter()
    _, _, table = study(config, workdir, fit_only=_FLAGS["fit_only"].value, log=lambda s: print(s, flush=True))
    print(table)
    print(f"done in {time.perf_counter() - t0:.0f} s; outputs in {workdir}")


def run():
    argv = configuration.prepare_argv(["--fit_only" if a == "--fit-only" else a for a in sys.argv])
    _define_flags()
    flags.mark_flags_as_required(["workdir"])
    app.run(configuration.reporting_errors(main), argv=argv)


if __name__ == "__main__":
    run()
