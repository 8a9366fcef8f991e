"""`make bench`: every benchmark script runs end to end without a trained run, and
RUNS=DIR passes the trained runs that exist under DIR to the scripts that read one.

The slow tests run the bench target's own commands (`make -n bench QUICK=1`, the
smallest sizes) and check the exit code and the lines that carry each script's
ratios; they never look at how long anything took.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from benchmarks import common
from configs import toy_flow_matching, toy_vpsde

ROOT = pathlib.Path(__file__).resolve().parent.parent
# helpers; needs torch; a profiler; a table of training times per config (minutes per
# config on a CPU, no ratio to check)
NOT_IN_BENCH = {"common", "lm_vs_torch", "lm_profile", "config_run_times"}

# Lines each script must print: its ratios, and what it timed without a trained run.
EXPECTED = {
    "likelihood_ode": [r"speed-up over scipy: batch_max norm [\d.]+x, rms norm .* [\d.]+x",
                       r"no --workdir given: timing the exact score"],
    "ensemble": [r"loop/map = +[\d.]+x", r"loop/vmap = +[\d.]+x", r"no trained run is read"],
    "sampler_speed": [r"speed-up DPM-Solver\+\+ / Euler-Maruyama: [\d.]+x",
                      r"no --workdir given: timing the exact score of the 64-D Gaussian mixture"],
    "flow_likelihood": [r"\| fm \(flow_matching\) \| NO \(initial parameters\) \| [\d,]+ \| [\d.]+ \|",
                        r"\| cnf \(cnf\) \| NO \(initial parameters\) \| [\d,]+ \| [\d.]+ \|",
                        r"no --realnvp given: timing an untrained realnvp model, configs/toy_realnvp.py",
                        r"no --fm given: .*not comparable"],
    "peak_flops": [r"ratio jax/numpy: [\d.]+x"],
    "lm_train_speed": [r"ratio medium/small tokens/s: [\d.]+x", r"no trained run is read"],
    "decode_speed": [r"ratio KV cache / no cache: [\d.]+x; speculative / KV cache: [\d.]+x",
                     r"no --target-workdir and --draft-workdir given: timing an untrained"],
    "guard_overhead": [r"train call, batch 64, 5 steps: .* ratio [\d.]+",
                       r"save: with checksums .* ratio [\d.]+", r"no trained run is read"],
    "compress_container": [r"params_fingerprint .* ratio to compress [\d.e+-]+",
                           r"no --workdir given: timing an untrained configs/lm_stdlib.py model"],
    "sampler_oracle": [r"\| vp/rings2d \| logsnr \| [^|]*\(1\.00\) \| [^|]*\([\d.]+\) \|"],
}


def bench_commands(**variables) -> dict:
    """{script: shell command} of the bench target, as `make -n` prints it with these
    variables (run with this interpreter, without the install step)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    args = ["make", "-n", "-s", "bench", "STAMP=", f"PY={sys.executable}"]
    args += [f"{k}={v}" for k, v in variables.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # not an outer make's
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    commands = {}
    for line in out.splitlines():
        match = re.search(r"-m benchmarks\.(\w+)", line)
        if match:
            commands[match.group(1)] = line
    return commands


def run_command(command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # conftest forces 8 host devices; a benchmark runs as `make bench` does
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_bench_runs_every_benchmark_script():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__"}
    assert set(bench_commands()) == scripts - NOT_IN_BENCH


def test_runs_are_passed_only_where_their_directory_exists(tmp_path):
    for name in ("demo", "fm", "lm_stdlib_long", "lm"):
        (tmp_path / name).mkdir()
    commands = bench_commands(RUNS=tmp_path)
    assert f"--workdir={tmp_path}/demo" in commands["likelihood_ode"]
    assert f"--fm={tmp_path}/fm" in commands["flow_likelihood"]
    assert "--realnvp" not in commands["flow_likelihood"] and "--cnf" not in commands["flow_likelihood"]
    assert "--workdir" not in commands["sampler_speed"]
    assert "workdir" not in commands["decode_speed"]  # the draft run is missing: neither is passed
    assert f"--workdir={tmp_path}/lm" in commands["compress_container"]
    (tmp_path / "lm_draft_long").mkdir()
    decode = bench_commands(RUNS=tmp_path)["decode_speed"]
    assert f"--target-workdir={tmp_path}/lm_stdlib_long --draft-workdir={tmp_path}/lm_draft_long" in decode
    assert all("workdir" not in c and "--fm" not in c for c in bench_commands().values())
    quick = bench_commands(QUICK=1)
    assert all("--quick" in c for c in quick.values())


def test_trained_config_refuses_what_is_not_a_trained_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.trained_config(str(tmp_path / "nothing"), "score_sde")
    assert exit_info.value.code == 2
    assert "no trained run" in capsys.readouterr().err

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(toy_flow_matching.get_config().to_json())
    with pytest.raises(SystemExit):
        common.trained_config(str(run), "score_sde", flag="--fm")
    assert f"--fm={run}: a 'flow_matching' run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        common.trained_config(str(run), "flow_matching")
    assert "no checkpoint" in capsys.readouterr().err


def _check(script: str, result: subprocess.CompletedProcess, expected) -> None:
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    for pattern in expected:
        assert re.search(pattern, result.stdout), f"{script}: no line matches {pattern!r} in\n{result.stdout}"


@pytest.mark.slow  # each script compiles its programs: 5-50 s apiece on a 2-core CPU
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_bench_script_runs_without_a_trained_run(script):
    command = bench_commands(QUICK=1)[script]
    _check(script, run_command(command), EXPECTED[script])


@pytest.mark.slow  # trains a tiny VP-SDE, then times its likelihood
def test_bench_reads_a_trained_run_from_runs(tmp_path):
    from experiments import main

    config = toy_vpsde.get_config()
    config.model.hidden = (32, 32)
    config.data.batch_size = 64
    config.train.num_steps = config.train.steps_per_call = config.train.checkpoint_every = 10
    main.train(config, str(tmp_path / "demo"), progress=False)
    command = bench_commands(QUICK=1, RUNS=tmp_path)["likelihood_ode"]
    assert f"--workdir={tmp_path}/demo" in command
    result = run_command(command)
    _check("likelihood_ode", result, [EXPECTED["likelihood_ode"][0], f"model: trained model in {tmp_path}/demo"])
    assert "no --workdir given" not in result.stdout
