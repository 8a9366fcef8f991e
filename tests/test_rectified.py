"""Tests for genjax.flows.rectified (reflow and one-step distillation) and the
experiments/reflow.py glue, against a Gaussian target with a closed-form flow.

For data x1 ~ N(mu, diag(s^2)), noise x0 ~ N(0, I) and independent pairs on the
straight path x_t = t x1 + (1 - t) x0, each coordinate of (x_t, x1 - x0) is
jointly Gaussian, so the marginal (base) velocity is the linear regression

    v(x, t) = mu + c_t (x - t mu),   c_t = (t s^2 - (1 - t)) / sigma_t^2,
    sigma_t^2 = t^2 s^2 + (1 - t)^2,

whose trajectories are X_t = t mu + sigma_t X_0: the flow map is x1 = mu + s x0,
but the paths are curved (sigma_t is not affine in t). Reflow on its pairs gives
the straight field v(x, t) = mu + (s - 1)(x - t mu) / (1 + t (s - 1)), along which
X_t = X_0 + t (X_1 - X_0) exactly.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from genjax import train
from genjax.flows import matching, ode, rectified
from genjax.nn.mlp import TimeMLP

MU = jnp.array([2.0, -1.0])
S = jnp.array([0.5, 2.0])  # one coordinate contracts, one expands


def base_velocity(x, t):
    t = t[:, None]
    c = (t * S**2 - (1 - t)) / (t**2 * S**2 + (1 - t) ** 2)
    return MU + c * (x - t * MU)


def straight_velocity(x, t):
    t = t[:, None]
    return MU + (S - 1) * (x - t * MU) / (1 + t * (S - 1))


def noise(seed, n=256):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 2))


def base_straightness(x0):
    """Closed form: along X_t = t mu + sigma_t X_0 the residual (X_1 - X_0) - v is
    (s - 1 - sigma_t') X_0, so S = mean_n sum_d x0_nd^2 int_0^1 (s_d - 1 - sigma_t')^2 dt."""
    per_dim = []
    for s in np.asarray(S, np.float64):
        sigma_dot = lambda t: (t * s * s - (1 - t)) / math.sqrt(t * t * s * s + (1 - t) ** 2)
        per_dim.append(scipy.integrate.quad(lambda t: (s - 1 - sigma_dot(t)) ** 2, 0, 1, epsabs=1e-12)[0])
    return float(np.mean(np.asarray(x0, np.float64) ** 2 @ np.asarray(per_dim)))


def test_one_step_of_the_base_flow_collapses_and_of_the_straight_flow_is_exact():
    x0 = noise(0)
    # c_0 = -1: the one-step base generator maps every noise to the data mean ...
    np.testing.assert_allclose(rectified.one_step(base_velocity, x0), jnp.broadcast_to(MU, x0.shape), atol=1e-6)
    # ... while one step of the reflowed (straight) field is the exact flow map.
    np.testing.assert_allclose(rectified.one_step(straight_velocity, x0), MU + S * x0, atol=1e-5)
    # The base ODE itself does reach mu + s x0 (the reflow pairs).
    _, x1 = jax.jit(lambda k: rectified.reflow_pairs(k, base_velocity, 256, (2,)))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(x1, MU + S * x0, atol=1e-4)


def test_distillation_loss_is_zero_at_the_exact_map_and_measures_a_shift():
    x0 = noise(1)
    x1 = MU + S * x0
    np.testing.assert_allclose(rectified.distillation_loss(straight_velocity, x0, x1), 0.0, atol=1e-9)
    shift = jnp.array([0.3, -0.4])
    shifted = lambda x, t: straight_velocity(x, t) + shift
    # The residual is exactly the shift: ||(0.3, -0.4)||^2 = 0.25 for every example.
    np.testing.assert_allclose(rectified.distillation_loss(shifted, x0, x1), 0.25, rtol=1e-4)
    with pytest.raises(ValueError, match=r"x0 has shape \(256, 2\).*x1 has shape \(256, 3\)"):
        rectified.distillation_loss(straight_velocity, x0, jnp.zeros((256, 3)))


def test_straightness_of_the_curved_base_flow_matches_the_closed_form():
    x0 = noise(2, 64)
    want = base_straightness(x0)
    assert want > 0.05  # the base flow is visibly curved
    got, _ = jax.jit(lambda x: rectified.straightness(None, base_velocity, x, num_steps=None, method="adaptive"))(x0)
    assert float(got) == pytest.approx(want, rel=1e-4)
    # The Euler estimate has O(1/K) error: 1000 steps must land within 1%.
    traj = jax.jit(lambda x: rectified.euler_trajectories(base_velocity, x, 1000))(x0)
    assert float(rectified.trajectory_straightness(traj)) == pytest.approx(want, rel=1e-2)


def test_euler_trajectories_and_their_straightness():
    x0, k = noise(3, 32), 20
    traj = jax.jit(lambda x: rectified.euler_trajectories(base_velocity, x, k))(x0)
    assert traj.shape == (k + 1, 32, 2)
    np.testing.assert_array_equal(traj[0], x0)
    euler, _ = ode.ode_sample(None, base_velocity, x0.shape, method="euler", num_steps=k, x_init=x0)
    np.testing.assert_allclose(traj[-1], euler, atol=1e-5)
    # For Euler trajectories the two straightness computations are the same sum.
    s_euler, _ = rectified.straightness(None, base_velocity, x0, num_steps=k, method="euler")
    assert float(rectified.trajectory_straightness(traj)) == pytest.approx(float(s_euler), rel=1e-4)
    # Along the straight field each Euler point is on the chord, at t = j / k.
    straight = rectified.euler_trajectories(straight_velocity, x0, k)
    ts = jnp.linspace(0.0, 1.0, k + 1)[:, None, None]
    np.testing.assert_allclose(straight, x0 + ts * (MU + S * x0 - x0), atol=1e-4)
    assert abs(float(rectified.trajectory_straightness(straight))) < 1e-4
    with pytest.raises(ValueError, match="num_steps"):
        rectified.euler_trajectories(base_velocity, x0, 0)
    with pytest.raises(ValueError, match="at least 2 time points"):
        rectified.trajectory_straightness(traj[:1])


def test_pairs_batch_fn_keeps_pairs_and_is_a_function_of_key_and_step():
    x0 = jnp.arange(20.0).reshape(10, 2)
    batch_fn = jax.jit(rectified.pairs_batch_fn(x0, 3.0 * x0 + 1.0, 16))
    key = jax.random.PRNGKey(4)
    a0, a1 = batch_fn(key, 5)
    assert a0.shape == a1.shape == (16, 2)
    np.testing.assert_array_equal(a1, 3.0 * a0 + 1.0)  # rows stay paired
    assert set(np.asarray(a0[:, 0]).tolist()) <= set(np.asarray(x0[:, 0]).tolist())
    np.testing.assert_array_equal(batch_fn(key, 5)[0], a0)
    assert not np.array_equal(batch_fn(key, 6)[0], a0)
    with pytest.raises(ValueError, match="x1 has shape"):
        rectified.pairs_batch_fn(x0, x0[:5], 4)
    with pytest.raises(ValueError, match="batch_size"):
        rectified.pairs_batch_fn(x0, x0, 0)


def fit(model, params, batch_fn, steps, learning_rate=3e-3, seed=5):
    optimizer, _ = train.make_optimizer(learning_rate=learning_rate, total_steps=steps, warmup_steps=20)
    state = train.init_state(lambda k, b: params, optimizer, jax.random.PRNGKey(seed), None)
    train_fn = jax.jit(train.make_train_fn(model.loss, optimizer, steps_per_call=steps, batch_fn=batch_fn))
    state, metrics = train_fn(state)
    assert np.all(np.isfinite(metrics["loss"]))
    return state.params


def test_reflow_then_distillation_on_the_gaussian():
    # The core recipe at small scale, with the exact base flow as the teacher:
    # reflow pairs -> a learned 2-rectified flow -> a distilled one-step generator.
    net = TimeMLP(hidden=(32, 32), time_dim=16)
    x0, x1 = jax.jit(lambda k: rectified.reflow_pairs(k, base_velocity, 4096, (2,)))(jax.random.PRNGKey(6))
    batch_fn = rectified.pairs_batch_fn(x0, x1, 256)
    reflow = matching.make_flow_matching_model(net, data_shape=(2,), paired=True)
    params = fit(reflow, reflow.init(jax.random.PRNGKey(7), (x0, x1)), batch_fn, 400)
    velocity = lambda x, t: net.apply(params, x, t)

    x_eval = noise(8, 512)
    exact = MU + S * x_eval
    curved = base_straightness(x_eval)
    learned, _ = jax.jit(lambda x: rectified.straightness(None, velocity, x, num_steps=50))(x_eval)
    # The pairs lie on a monotone affine map, so the straight field is the exact
    # minimiser of the paired loss; the learned one must remove at least 80% of
    # the base flow's curvature (its straightness starts at 0 only by the zero
    # initialisation's constant velocity, so compare errors too).
    assert float(learned) < 0.2 * curved
    one_step_err = float(jnp.mean(jnp.sum((rectified.one_step(velocity, x_eval) - exact) ** 2, 1)))
    base_err = float(jnp.mean(jnp.sum((rectified.one_step(base_velocity, x_eval) - exact) ** 2, 1)))
    assert base_err == pytest.approx(float(jnp.mean(jnp.sum((S * x_eval) ** 2, 1))), rel=1e-4)
    # A straight flow needs one step: at least 10x less squared error than the base flow's one step.
    assert one_step_err < 0.1 * base_err

    # Distillation from the reflowed weights on the same pairs: one evaluation of
    # the distilled map fits them better than one Euler step of the flow it distils.
    distill = rectified.make_distillation_model(net, data_shape=(2,))
    before = float(distill.loss(params, None, (x0, x1))[0])
    distilled = fit(distill, params, batch_fn, 300, learning_rate=1e-3, seed=9)
    after = float(distill.loss(distilled, None, (x0, x1))[0])
    assert after < 0.25 * before
    samples = jax.jit(lambda p: distill.sample(p, jax.random.PRNGKey(10), 64))(distilled)
    assert samples.shape == (64, 2) and distill.log_prob is None
    with pytest.raises(ValueError, match=r"x1 \(data_shape=\(2,\)\).*\(4, 3\)"):
        distill.loss(distilled, None, (x0[:4], jnp.zeros((4, 3))))


# ----------------------------------------------------------------------------- the glue


def tiny_config(name="eight_gaussians"):
    from configs import toy_reflow

    c = toy_reflow.get_config()
    c.data.name = name
    c.model.hidden = (32, 32)
    c.data.batch_size = 128
    c.train.num_steps = c.train.checkpoint_every = 200
    c.train.steps_per_call = 100
    c.reflow.num_pairs = 1024
    c.reflow.pair_chunk = 512
    c.reflow.pair_num_steps = 8
    for section in (c.reflow, c.distill):
        section.train.num_steps = section.train.checkpoint_every = section.train.steps_per_call = 100
        section.optim.warmup_steps = 10
    c.optim.warmup_steps = 20
    c.compare.num = 256
    c.compare.straightness_num = 64
    c.compare.straightness_steps = 20
    c.compare.num_trajectories = 8
    return c


def test_base_run_with_another_config_is_refused(tmp_path):
    from experiments import reflow as reflow_exp
    from experiments import run_config

    config = tiny_config()
    saved = run_config.as_json(config, reflow_exp.BASE_FIELDS)
    saved["data"]["name"] = "checkerboard"
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    os.makedirs(tmp_path / "checkpoints" / "100")  # a base run that has trained
    with pytest.raises(ValueError, match=r'data.name: "checkerboard" -> "eight_gaussians"'):
        reflow_exp.check_base_config(config, str(tmp_path))
    saved["data"]["name"] = "eight_gaussians"
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    reflow_exp.check_base_config(config, str(tmp_path))  # agrees: no error


TINY_BASE = {"model.hidden": (32, 32), "data.batch_size": 128, "train.num_steps": 100,
             "train.checkpoint_every": 100, "train.steps_per_call": 100, "optim.warmup_steps": 20}


def _set_keys(config, changes):
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def tiny_base_run(workdir, data_name="checkerboard", stop_after=None):
    """A tiny flow matching run of configs/toy_flow_matching.py (as experiments.main
    trains it) on `data_name` in `workdir`; returns its config."""
    from configs import toy_flow_matching
    from experiments import main as main_lib

    config = _set_keys(toy_flow_matching.get_config(), {**TINY_BASE, "data.name": data_name})
    main_lib.train(config, str(workdir), stop_after=stop_after, progress=False)
    return config


def test_a_base_workdir_with_a_run_gives_the_reflow_its_base_fields(tmp_path):
    """The README's command: --base_workdir holds a checkerboard run of
    configs/toy_flow_matching.py while configs/toy_reflow.py defaults to the eight
    gaussians; the reflow takes data, model, optim, train and seed from the run."""
    from experiments import reflow as reflow_exp
    from experiments import run_config

    base_dir = str(tmp_path / "fm")
    tiny_base_run(base_dir, "checkerboard")
    config = tiny_config()  # configs/toy_reflow.py: eight gaussians, 200 base steps
    assert config.data.name == "eight_gaussians"
    merged, note = reflow_exp.with_base_run(config, base_dir)
    assert note == f"base flow: {base_dir} (its config.json: checkerboard, 100 steps)"
    assert merged.data.name == "checkerboard" and merged.train.num_steps == 100
    assert merged.model.hidden == (32, 32) and isinstance(merged.model.hidden, tuple)
    for field in reflow_exp.BASE_FIELDS:
        assert run_config.as_json(merged[field]) == run_config.as_json(run_config.load_run(base_dir)[field]), field
    # the reflow's own sections stay --config's
    assert run_config.as_json(merged, ("reflow", "distill", "compare")) == run_config.as_json(
        config, ("reflow", "distill", "compare"))
    assert merged.is_locked and config.data.name == "eight_gaussians"  # --config itself is not changed
    reflow_exp.check_base_config(merged, base_dir)  # the identity check passes
    exp, state = reflow_exp.load_or_train_base(merged, base_dir)  # restored: nothing trains
    assert int(state.step) == 100 and exp.source.config.data.name == "checkerboard"

    # command-line overrides of base fields are checked against the run like a resume
    config.train.num_steps = 300
    merged, note = reflow_exp.with_base_run(config, base_dir, ["train.num_steps", "reflow.num_pairs"])
    assert merged.train.num_steps == 300
    assert note == f"base flow: {base_dir} (its config.json: checkerboard, 100 steps); from the command line: " \
                   f"train.num_steps=300"
    reflow_exp.check_base_config(merged, base_dir)  # a longer base: it resumes
    merged, _ = reflow_exp.with_base_run(config, base_dir, ["data.name"])
    with pytest.raises(ValueError, match=r'data.name: "checkerboard" -> "eight_gaussians"'):
        reflow_exp.check_base_config(merged, base_dir)

    # no run in the base workdir: the base is trained from --config, as before
    assert reflow_exp.with_base_run(config, str(tmp_path / "empty")) == (config, None)
    # a run of another family is not a base flow
    saved = json.load(open(os.path.join(base_dir, "config.json")))
    os.makedirs(tmp_path / "cnf")
    with open(tmp_path / "cnf" / "config.json", "w") as f:
        json.dump({**saved, "family": "cnf"}, f)
    with pytest.raises(ValueError, match="holds a 'cnf' run; the base of a reflow is a 'flow_matching' run"):
        reflow_exp.with_base_run(config, str(tmp_path / "cnf"))


def test_command_line_keys():
    from experiments import reflow as reflow_exp

    argv = ["--config=configs/toy_reflow.py", "--config.data.name=checkerboard", "--workdir=w",
            "--config.train.num_steps", "20", "--base_workdir=b"]
    assert reflow_exp.command_line_keys(argv) == ["data.name", "train.num_steps"]


@pytest.mark.slow
def test_readme_reflow_command_on_a_base_run_of_another_dataset(tmp_path):
    """The CLI end to end: a tiny interrupted checkerboard base run, configs/toy_reflow.py
    (eight gaussians) with tiny reflow stages: the base resumes with its saved config
    and the reflow runs on the checkerboard; a rerun is accepted."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base_dir, wd = str(tmp_path / "fm"), str(tmp_path / "reflow")
    tiny_base_run(base_dir, "checkerboard", stop_after=None)
    # extend it by a command-line override (may change on resume) to check the resume path
    tiny = {"reflow.num_pairs": 512, "reflow.pair_chunk": 512, "reflow.pair_num_steps": 4,
            "compare.num": 128, "compare.straightness_num": 32, "compare.straightness_steps": 10,
            "compare.num_trajectories": 4, "compare.euler_steps": "(1,2,4)"}
    for section in ("reflow", "distill"):
        tiny.update({f"{section}.train.num_steps": 50, f"{section}.train.checkpoint_every": 50,
                     f"{section}.train.steps_per_call": 50, f"{section}.optim.warmup_steps": 5})
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", PYTHONPATH=repo,
               JAX_COMPILATION_CACHE_DIR=os.path.join(repo, ".jax_cache"))
    command = [sys.executable, "-m", "experiments.reflow", "--config=configs/toy_reflow.py", f"--workdir={wd}",
               f"--base_workdir={base_dir}", *(f"--config.{k}={v}" for k, v in tiny.items())]
    first = subprocess.run(command + ["--config.train.num_steps=200"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.splitlines()[0] == (f"base flow: {base_dir} (its config.json: checkerboard, 100 steps); "
                                            f"from the command line: train.num_steps=200")
    # the resume changed the step budget alone: the run keeps its own sample and eval sections
    with open(os.path.join(base_dir, "config_changes.jsonl")) as f:
        (record,) = [json.loads(line) for line in f]
    assert [c["key"] for c in record["changes"]] == ["train.num_steps"]
    results = json.load(open(os.path.join(wd, "reflow_results.json")))
    assert results["dataset"] == "checkerboard" and results["steps"]["base"] == 200
    identity = json.load(open(os.path.join(wd, "config.json")))
    assert identity["data"]["name"] == "checkerboard" and identity["model"]["hidden"] == [32, 32]
    # the same command again (the base is now at 200 steps): every stage loads
    again = subprocess.run(command + ["--config.train.num_steps=200"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.load(open(os.path.join(wd, "reflow_results.json")))["rows"] == results["rows"]


@pytest.mark.slow
def test_reflow_experiment_end_to_end(tmp_path):
    from experiments import reflow as reflow_exp

    config, wd = tiny_config(), str(tmp_path)
    results, pictures = reflow_exp.run_reflow(config, wd, os.path.join(wd, "base"))
    names = [r["model"] for r in results["rows"]]
    assert names == ["base (1-rectified)", "reflow (2-rectified)", "distilled 2-rectified", "distilled base"]
    for r in results["rows"]:
        assert all(np.isfinite(v) and v > 0 for v in r["swd"].values())
    assert set(results["rows"][0]["swd"]) == {"1", "2", "4", "100"}
    # Straightness is a mean of squared residuals minus a Cauchy-Schwarz bound: >= 0
    # up to float32 rounding.
    assert results["rows"][0]["straightness"] > -1e-4 and results["rows"][1]["straightness"] > -1e-4
    assert results["steps"] == {"base": 200, "reflow": 100, "distill": 100}
    table = reflow_exp.to_markdown(results, config)
    assert "| base (1-rectified) |" in table and "floor" in table
    reflow_exp.figure(os.path.join(wd, "reflow.png"), pictures, results)
    assert os.path.getsize(os.path.join(wd, "reflow.png")) > 0
    for stage in ("reflow", "distill", "distill_base"):
        assert os.path.exists(os.path.join(wd, stage, "loss.png")), stage
    # A rerun loads every stage (no training) and reproduces the numbers.
    again, _ = reflow_exp.run_reflow(config, wd, os.path.join(wd, "base"))
    assert again["rows"] == results["rows"]
