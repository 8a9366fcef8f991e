"""Every command README.md shows runs as written, shrunk by config overrides.

The commands are read from README.md itself: the lines of its code blocks and its
inline `...` spans that start with `make`, `pip`, `python -m`, `.venv/bin/python -m`,
`.venv/bin/pip` or `.venv/bin/tensorboard` (shell line continuations joined,
comments and a trailing `&` dropped, an `a|b` alternative split into one command
each). Each must match an entry of COMMANDS (the longest command prefix that fits):
the arguments appended to shrink it to a few tens of steps, or the reason it is not
run here. A README command that no entry matches fails the fast test, naming it;
so does an entry that matches nothing.

The slow test runs them in the table's order (a run before the commands that read
it) with bash, in a temporary directory that holds a link to the repository's
configs/ and one named .venv to this interpreter's environment (`python` is that
environment's too), so each command runs as the README writes it and its `runs/...`
land in the temporary directory. Each must exit 0 and write what its check looks
for. The digits classifier that the digits evaluation trains once is copied from
the repository's runs/digits_classifier when it is there; the LM runs read a small
corpus written into the temporary directory (data.data_dir) instead of the stdlib.
"""
import dataclasses
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import pytest

from genjax.data import text

REPO = pathlib.Path(__file__).resolve().parent.parent
PREFIXES = ("make ", "pip ", "python -m ", ".venv/bin/python -m ", ".venv/bin/pip ", ".venv/bin/tensorboard ")


# ----------------------------------------------------------------------------- reading the README

def _block_commands(lines, comments):
    """The commands of one fenced code block: continuations joined, `# ...` comments
    (appended to `comments`) and a trailing `&` (run in the background) dropped."""
    commands, current = [], ""
    for line in lines:
        line, *comment = re.split(r"(?:^|\s)#", line, maxsplit=1)
        comments += comment
        line = line.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        commands.append((current + line).strip().removesuffix("&"))
        current = ""
    return commands


def _alternatives(command):
    """`prog a|b --x` -> [`prog a --x`, `prog b --x`]; options are never split."""
    words = command.split()
    choices = [w.split("|") if re.fullmatch(r"[a-z][\w-]*(\|[a-z][\w-]*)+", w) else [w] for w in words]
    return [" ".join(c) for c in itertools.product(*choices)]


def readme_commands(markdown):
    """The commands a README shows, each once: those of its code blocks, then its
    inline spans (in the prose and in the code blocks' comments)."""
    prose, block, in_block, found = [], [], False, []
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            if in_block:
                found += _block_commands(block, prose)
                block = []
            in_block = not in_block
        else:
            (block if in_block else prose).append(line)
    found += re.findall(r"`([^`]+)`", "\n".join(prose))
    commands = []
    for command in found:
        command = " ".join(command.split())
        if command.startswith(PREFIXES):
            commands += [c for c in _alternatives(command) if c not in commands]
    return commands


# ----------------------------------------------------------------------------- the table

@dataclasses.dataclass(frozen=True)
class Entry:
    shrink: str = ""               # appended to the command
    skip: str = ""                 # why it is not run here
    before: tuple = ()             # commands (not the README's) whose runs this one reads
    placeholders: tuple = ()       # (README placeholder, value) pairs
    check: Callable | None = None  # (workspace, stdout) -> False (or an assert) if what it wrote is wrong
    make_recipe: bool = False      # run the make target's recipe (`make -n`) without the install step


def _steps(n=20, per_call=10):
    return (f"--config.train.num_steps={n} --config.train.steps_per_call={per_call} "
            f"--config.train.checkpoint_every={n} ")


TOY = _steps() + "--config.optim.warmup_steps=2 --config.data.batch_size=64 --config.model.hidden='(32,32)' "
TOY_EVAL = ("--config.sample.num=64 --config.eval.num=64 --config.eval.grid_size=8 "
            "--config.eval.rtol=1e-3 --config.eval.atol=1e-3 --config.eval.heatmap_tol=1e-2")
SCORE_TOY = TOY + "--config.sample.num_steps=20 " + TOY_EVAL
FLOW_TOY = TOY + "--config.sample.method=euler --config.sample.num_steps=8 " + TOY_EVAL
LM = ("--config.data.data_dir=corpus --config.data.batch_size=4 --config.data.seq_len=32 "
      "--config.model.num_layers=1 --config.model.d_model=32 --config.model.num_heads=2 --config.model.max_len=32 "
      "--config.optim.warmup_steps=2 --config.compress.keep=16 --config.compress.chunk=64 "
      "--config.sample.num=2 --config.sample.num_steps=8 --config.eval.num_windows=16 --config.eval.curve_windows=8 ")
LM_RUN = "python -m experiments.main --config=configs/lm_stdlib.py --workdir=runs/lm --mode=all " + LM + _steps()
DIGITS_CFG_RUN = ("python -m experiments.main --config=configs/digits_cfg.py --workdir=runs/digits_cfg --mode=train "
                  + _steps() + "--config.optim.warmup_steps=2 --config.data.batch_size=16 "
                  "--config.sample.num_steps=4")
REFLOW = " ".join(f"--config.{k}={v}" for k, v in {
    "reflow.num_pairs": 256, "reflow.pair_chunk": 256, "reflow.pair_num_steps": 4,
    "compare.num": 128, "compare.straightness_num": 32, "compare.straightness_steps": 10,
    "compare.num_trajectories": 4, "compare.euler_steps": "'(1,2,4)'",
    **{f"{s}.{k}": v for s in ("reflow", "distill") for k, v in
       {"train.num_steps": 10, "train.checkpoint_every": 10, "train.steps_per_call": 10,
        "optim.warmup_steps": 2}.items()}}.items())
GAN = (TOY.replace("--config.optim.warmup_steps=2 ", "").replace("model.hidden", "model.generator_hidden")
       + "--config.model.critic_hidden='(32,32)' --config.sample.num=64 --config.eval.num=64")
SCALING = ("--config.model.sizes='((1,8,2),(2,16,2))' --config.data.batch_size=4 --config.data.seq_len=8 "
           "--config.data.eval_windows=20 --config.train.tokens='(32,64)' --config.train.steps_per_call=4 "
           "--config.optim.learning_rate=1e-2 --config.fit.grid=small --config.fit.bootstrap_samples=8")


def _load(ws, path):
    with open(ws / path) as f:
        return json.load(f)


def _samples(ws, workdir):
    with np.load(ws / workdir / "samples.npz") as saved:
        return saved["samples"].shape


def check_demo(ws, out):
    # what the README says runs/demo/ then holds
    for name in ("samples.png", "density.png", "loss.png", "metrics.jsonl", "eval.json", "checkpoints"):
        assert (ws / "runs/demo" / name).exists(), name
    assert list((ws / "runs/demo/tensorboard").rglob("events.out.tfevents.*"))
    assert {"nll_nats", "sliced_wasserstein"} <= set(_load(ws, "runs/demo/eval.json"))


def check_trained_toy(workdir):
    def check(ws, out):
        assert _samples(ws, workdir) == (64, 2)
        assert {"nll_nats", "sliced_wasserstein", "step"} <= set(_load(ws, f"{workdir}/eval.json"))
    return check


def check_compress_round_trip(ws, out):
    assert (ws / "message.out").read_bytes() == (ws / "message.txt").read_bytes()


def check_heldout(ws, out):
    result = json.loads(out[out.index("{"):])
    assert result["round_trip_exact"] and result["num_files"] == len(
        [p for p in (ws / "corpus").glob("*.py") if text.is_validation(p.name)])


COMMANDS = {
    "make demo": Entry(make_recipe=True, shrink=SCORE_TOY, check=check_demo),
    "make test": Entry(skip="runs the test suite, which holds this test"),
    "make test-all": Entry(skip="runs the test suite, which holds this test"),
    ".venv/bin/pip install tensorboard": Entry(skip="installs from the network"),
    ".venv/bin/tensorboard --logdir runs/demo/tensorboard": Entry(
        skip="a server that runs until stopped, from the install above (the events it reads: make demo's check)"),
    ".venv/bin/python -m experiments.main --list": Entry(
        check=lambda ws, out: all(f"{name}.py" in out for name in ("toy_vpsde", "lm_stdlib", "digits_cfg"))),
    ".venv/bin/python -m experiments.main --config=configs/toy_vpsde.py --workdir=runs/vp": Entry(
        shrink=SCORE_TOY, check=check_trained_toy("runs/vp")),
    ".venv/bin/python -m experiments.main --mode=sample --workdir=runs/vp": Entry(
        check=lambda ws, out: _samples(ws, "runs/vp") == (500, 2)),
    ".venv/bin/python -m experiments.main --mode=eval --workdir=runs/vp": Entry(
        check=lambda ws, out: _load(ws, "runs/vp/eval.json")["params"] == "raw"),
    "python -m experiments.main --config=configs/toy_vpsde.py --workdir=runs/mp --distributed": Entry(
        skip="several processes meeting at a port: tests/test_distributed.py runs them"),
    "python -m experiments.main --config=configs/toy_flow_matching.py --workdir=runs/fm": Entry(
        shrink=FLOW_TOY, check=check_trained_toy("runs/fm")),
    "python -m experiments.reflow --config=configs/toy_reflow.py --workdir=runs/reflow --base_workdir=runs/fm": Entry(
        shrink=REFLOW, check=lambda ws, out: _load(ws, "runs/reflow/reflow_results.json")["dataset"] == "checkerboard"),
    "python -m experiments.ablate --config=configs/lm_stdlib.py --workdir=runs/abl": Entry(
        shrink=LM + _steps(10, 10) + "--strategy=vmap",
        check=lambda ws, out: (ws / "runs/abl/results.md").exists()),
    "python -m experiments.main --config=configs/digits_cfg.py --workdir=runs/digits_cfg": Entry(
        shrink=DIGITS_CFG_RUN.split("--workdir=runs/digits_cfg ", 1)[1],
        check=lambda ws, out: (ws / "runs/digits_cfg/config.json").exists()),
    "python -m experiments.guidance_sweep --workdir=runs/digits_cfg": Entry(
        shrink="--weights=0,1 --num=20",
        check=lambda ws, out: [r["guidance"] for r in _load(ws, "runs/digits_cfg/guidance_sweep.json")] == [0, 1]),
    "python -m experiments.gan_study --config=configs/gan_grid25.py --workdir=runs/gan_study": Entry(
        shrink="--seeds=2 --strategy=vmap " + GAN,
        check=lambda ws, out: [len(_load(ws, "runs/gan_study/gan_study.json")[w]["per_seed"]) for w in ("ema", "last")]
        == [2, 2]),
    "python -m experiments.compress compress": Entry(
        before=(LM_RUN,), placeholders=(("RUN", "runs/lm"), ("IN", "message.txt"), ("OUT", "message.gjlm")),
        check=lambda ws, out: (ws / "message.gjlm").read_bytes()[:4] == b"GJLM"),
    "python -m experiments.compress decompress": Entry(
        before=(LM_RUN,), placeholders=(("RUN", "runs/lm"), ("IN", "message.gjlm"), ("OUT", "message.out")),
        check=check_compress_round_trip),
    "python -m experiments.compress heldout": Entry(
        before=(LM_RUN,), placeholders=(("RUN", "runs/lm"),), check=check_heldout),
    "python -m experiments.scaling --workdir=runs/scaling": Entry(
        shrink=SCALING, check=lambda ws, out: (ws / "runs/scaling/results.md").exists()),
    "make bench": Entry(skip="tests/test_benchmarks.py runs the bench target's commands (QUICK=1)"),
    "python -m benchmarks.ensemble": Entry(skip="one of make bench's commands: tests/test_benchmarks.py runs it (--quick)"),
    "python -m benchmarks.config_run_times": Entry(  # not one of make bench's: one config, one timed call
        shrink="--configs=toy_vpsde --calls=1", check=lambda ws, out: "| toy_vpsde | 6000 |" in out),
    "python -m experiments.pixelcnn_compress --workdir=runs/digits_pixelcnn": Entry(
        skip="codes a trained PixelCNN's test split; tests/test_pixelcnn.py runs the script on a tiny run"),
    "python -m experiments.main --config=configs/digits_kl_autoencoder.py --workdir=runs/digits_kl_ae": Entry(
        skip="tests/test_latent_diffusion.py trains a tiny autoencoder and a latent diffusion run on it"),
    "python -m experiments.main --config=configs/digits_latent_diffusion.py --workdir=runs/digits_ldm": Entry(
        skip="tests/test_latent_diffusion.py trains a tiny autoencoder and a latent diffusion run on it"),
    "python -m experiments.compare --runs_dir=runs/table --out=runs/table/compare": Entry(
        skip="reads trained runs of every family; tests/test_compare.py trains tiny ones and compares them"),
    'pip install "jax[cuda13]"': Entry(skip="installs the GPU build of JAX from the network"),
}


def entry_of(command):
    """The table key of the longest command prefix that fits, else None."""
    fits = [k for k in COMMANDS if command == k or command.startswith(k + " ")]
    return max(fits, key=len, default=None)


def _readme():
    return (REPO / "README.md").read_text()


# ----------------------------------------------------------------------------- fast checks

def test_reading_commands_from_markdown():
    markdown = "\n".join([
        "Run `make demo` or `python -m a.b x|y --n=1`; not `--mode=sample|eval` nor `ls runs`.",
        "A span over two lines: `python -m c", "  --k=v`.",
        "```bash", "make test   # the suite (`make test-all`: all of it)", ".venv/bin/python -m d --w=1 \\", "    --q=2 &", "```",
    ])
    assert readme_commands(markdown) == [
        "make test", ".venv/bin/python -m d --w=1 --q=2", "make demo", "python -m a.b x --n=1",
        "python -m a.b y --n=1", "python -m c --k=v", "make test-all"]


def test_every_readme_command_is_in_the_table():
    commands = readme_commands(_readme())
    unknown = [c for c in commands if entry_of(c) is None]
    assert not unknown, ("README commands without an entry in COMMANDS (tests/test_readme_commands.py): "
                         "add how to shrink each, or why it is not run:\n  " + "\n  ".join(unknown))
    unused = set(COMMANDS) - {entry_of(c) for c in commands}
    assert not unused, f"entries of COMMANDS that match no README command: {sorted(unused)}"


# ----------------------------------------------------------------------------- running them

def _env(ws):
    env = {k: v for k, v in os.environ.items()
           if "proxy" not in k.lower() and k not in ("XLA_FLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
               PATH=f"{ws / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def _workspace(ws):
    """configs/ and .venv as the README's commands expect them, the digits classifier
    if it is cached, a small text corpus with both splits, and a file to compress."""
    (ws / "configs").symlink_to(REPO / "configs")
    (ws / ".venv").symlink_to(pathlib.Path(sys.prefix))
    classifier = REPO / "runs" / "digits_classifier"
    if classifier.is_dir():
        shutil.copytree(classifier, ws / "runs" / "digits_classifier")
    corpus = ws / "corpus"
    corpus.mkdir()
    code = "def f{i}(x, y):\n    '''Adds {i}.'''\n    return x + y * {i}\n\n\nclass C{i}:\n    pass\n"
    names = [f"module_{i}.py" for i in range(60)]
    assert {text.split_of(n) for n in names} == {"train", "validation"}
    for i, name in enumerate(names):
        (corpus / name).write_text(code.format(i=i) * 4)
    (ws / "message.txt").write_text("def add(x, y):\n    return x + y\n")


def _run(ws, command, timings):
    t0 = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=ws, env=_env(ws), capture_output=True, text=True,
                          timeout=600)
    timings.append((time.perf_counter() - t0, command))
    assert done.returncode == 0, (f"README command failed (exit {done.returncode}):\n  {command}\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def _as_run(key, command, ws):
    """The shell command that stands for a README command: placeholders filled in,
    a make target replaced by its recipe, then the shrinking arguments."""
    entry = COMMANDS[key]
    for name, value in entry.placeholders:
        command = re.sub(rf"\b{name}\b", value, command)
    if entry.make_recipe:
        if shutil.which("make") is None:
            pytest.skip("make is not installed")
        recipe = subprocess.run(["make", "-n", "-s", "-f", str(REPO / "Makefile"), *command.split()[1:], "STAMP=",
                                 "PY=.venv/bin/python"], cwd=ws, env=_env(ws), capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()
        return " && ".join(f"{line} {entry.shrink}" for line in recipe)
    return f"{command} {entry.shrink}".strip()


@pytest.mark.slow  # 16 tiny runs, one process each (a few minutes on 2 cores)
def test_every_readme_command_runs(tmp_path):
    _workspace(tmp_path)
    commands = readme_commands(_readme())
    timings, done, skipped = [], set(), []
    for key, entry in COMMANDS.items():  # the table's order: a run before the commands that read it
        for command in [c for c in commands if entry_of(c) == key]:
            if entry.skip:
                skipped.append(f"{command}: {entry.skip}")
                continue
            for setup in entry.before:
                if setup not in done:
                    _run(tmp_path, setup, timings)
                    done.add(setup)
            out = _run(tmp_path, _as_run(key, command, tmp_path), timings)
            assert entry.check(tmp_path, out) is not False, f"{command}: its check failed\n{out[-2000:]}"
    print("\n".join(f"{seconds:6.1f} s  {command}" for seconds, command in timings))
    print("not run:\n  " + "\n  ".join(skipped))
