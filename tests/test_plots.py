"""Every figure the experiments write says what it shows: axis labels, a labelled
colour bar, legends, titles — read back from the Figure objects."""
import numpy as np

from experiments import plots


def _labels(ax):
    return ax.get_xlabel(), ax.get_ylabel()


def test_scatter_and_density_plots_label_the_plane_and_the_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    fig = plots.scatter_samples(tmp_path / "s.png", rng.normal(size=(50, 2)), rng.normal(size=(60, 2)),
                                title="VP-SDE, pc sampler")
    left, right = fig.axes
    assert _labels(left) == ("$x_1$", "$x_2$") and right.get_xlabel() == "$x_1$"
    assert left.get_title() == "held-out data (60 points)" and right.get_title() == "model samples (50 points)"
    assert fig._suptitle.get_text() == "VP-SDE, pc sampler"

    fig = plots.density_heatmap(tmp_path / "d.png", np.zeros((8, 8)), lim=4.0, title="probability-flow ODE")
    image_ax, colour_bar = fig.axes
    assert _labels(image_ax) == ("$x_1$", "$x_2$") and image_ax.get_title() == "probability-flow ODE"
    assert colour_bar.get_ylabel() == "model density p(x)"
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "d.png").stat().st_size > 0


def test_loss_plots_label_their_axes_and_take_negative_losses_and_short_runs(tmp_path):
    fig = plots.loss_curve(tmp_path / "l.png", [100], [1.5])  # a run with one logged point
    (ax,) = fig.axes
    assert ax.get_xlabel() == "training step" and ax.get_ylabel().startswith("loss")
    assert ax.get_yscale() == "log" and ax.lines[0].get_marker() == "."
    fig = plots.loss_curve(tmp_path / "n.png", np.arange(1, 101), -np.linspace(1, 3, 100))  # Glow, a critic
    assert fig.axes[0].get_yscale() == "symlog" and fig.axes[0].lines[0].get_marker() in (None, "None")
    fig = plots.loss_curves(tmp_path / "c.png", {"lr=1e-3": np.ones((3, 5)), "lr=3e-3": -np.ones((3, 5))})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr=1e-3", "lr=3e-3"]
    assert ax.get_yscale() == "symlog" and ax.get_xlabel() == "training step"


def test_ebm_and_per_seed_figures(tmp_path):
    grid = np.ones((4, 4)) / 16
    fig = plots.density_comparison(tmp_path / "e.png", grid, grid, np.zeros((10, 2)), (-2, 2), title="rings")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["model exp(-E)/Z", "true density", "MALA samples (10)"]
    assert fig.axes[3].get_ylabel() == "density p(x)"
    assert all(_labels(ax) == ("$x_1$", "$x_2$") for ax in fig.axes[:3])
    fig = plots.scatter_per_seed(tmp_path / "p.png", np.zeros((3, 5, 2)), ["seed 0", "seed 1", "seed 2"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["seed 0", "seed 1", "seed 2"]


def test_sample_title_names_model_sampler_steps_guidance_step_and_weights():
    assert (plots.sample_title("vp", "pc", num_steps=500, guidance=2, step=5000)
            == "vp, pc sampler, 500 steps, guidance w=2, training step 5000 (EMA weights)")
    assert plots.sample_title("flow_matching", "adaptive") == "flow_matching, adaptive sampler (EMA weights)"
    assert plots.sample_title("ddpm_cosine", "ddim", num_steps=1, guidance=0.5, params="ema") == (
        "ddpm_cosine, ddim sampler, 1 step, guidance w=0.5 (EMA weights)")
    assert plots.sample_title("gan", "generator", step=100, params="raw") == (
        "gan, generator sampler, training step 100 (raw weights)")
    assert plots.sample_title("realnvp", "inverse", params=None) == "realnvp, inverse sampler"


def _image_source(conditional):
    import ml_collections

    from experiments import sources

    config = ml_collections.ConfigDict({"model": {"conditional": conditional}})
    images = np.zeros((20, 8, 8, 1), np.uint8)
    return sources.ImageSource(config, lambda split: (images, np.arange(20) % 10), 17, 10, has_classifier=False)


def test_digit_grids_say_where_the_classes_are(tmp_path):
    samples = np.zeros((100, 8, 8, 1), np.float32)
    fig = _image_source(True).plot_samples(tmp_path / "a.png", samples, "vp, pc sampler")
    assert fig.axes[0].get_title() == ("vp, pc sampler\n"
                                       "columns: classes 0-9 (sample i drawn for label i mod 10)")
    fig = _image_source(True).plot_samples(tmp_path / "b.png", samples, "w=1", sorted_by_label=True)
    assert fig.axes[0].get_title() == "w=1\nrows: classes 0-9 (the label each sample was drawn for)"
    fig = _image_source(False).plot_samples(tmp_path / "c.png", samples, "vp, pc sampler")
    assert fig.axes[0].get_title() == "vp, pc sampler"  # unconditional: no classes to place


def test_guidance_sweep_grid_title_names_weight_sampler_steps_and_step():
    import ml_collections

    from experiments import guidance_sweep

    config = ml_collections.ConfigDict({"family": "ddpm", "model": {"sde": "ddpm_cosine"},
                                        "sample": {"method": "ddim", "num_steps": 50}})
    assert guidance_sweep.grid_title(config, {"num_steps": 50, "method": "ddim"}, "0.5", 2000) == (
        "ddpm_cosine, ddim sampler, 50 steps, guidance w=0.5, training step 2000 (EMA weights)")


def test_density_title_says_how_the_density_was_computed_and_at_which_step(tmp_path, monkeypatch):
    import jax.numpy as jnp
    import ml_collections

    from experiments import sources
    from genjax.core import Model

    figures = []
    heatmap = plots.density_heatmap
    monkeypatch.setattr(plots, "density_heatmap", lambda *a, **k: figures.append(heatmap(*a, **k)))
    # a standard normal "model": the title is what is checked, not the density
    log_prob = lambda params, key, x, **kw: -0.5 * jnp.sum(x**2, 1) - jnp.log(2 * jnp.pi)  # noqa: E731
    model = Model(init=None, loss=None, sample=None, log_prob=log_prob)
    config = ml_collections.ConfigDict({
        "seed": 0, "data": {"name": "eight_gaussians"}, "model": {"sde": "vp"},
        "eval": {"num": 16, "grid_size": 8, "heatmap_tol": 1e-3}})
    ode = {"exact_divergence": True, "rtol": 1e-5, "atol": 1e-5}
    sources.ToySource(config).evaluate(model, None, str(tmp_path), log_prob_kwargs=ode, step=5000)
    title = figures[-1].axes[0].get_title()
    assert title.startswith("model density (probability-flow ODE, exact divergence, tol 0.001), "
                            "training step 5000\nheld-out NLL ")
    del config.model["sde"]  # a flow: its own ODE; no solver keywords: an exact flow
    sources.ToySource(config).evaluate(model, None, str(tmp_path), log_prob_kwargs={})
    assert figures[-1].axes[0].get_title().startswith("model density (exact change of variables)\nheld-out NLL ")
    sources.ToySource(config).evaluate(model, None, str(tmp_path), log_prob_kwargs={**ode, "exact_divergence": False})
    assert figures[-1].axes[0].get_title().startswith("model density (flow ODE, Hutchinson trace estimate, tol 0.001)")


def test_reflow_figure_has_a_legend_and_labelled_axes_on_every_panel(tmp_path):
    from experiments import reflow

    rng = np.random.default_rng(1)
    points = lambda: rng.normal(size=(40, 2))  # noqa: E731
    base, flow = "base (1-rectified)", "reflow (2-rectified)"
    rows = [{"model": base, "swd": {"1": 2.5, "4": 0.4}, "straightness": 2.7},
            {"model": flow, "swd": {"1": 0.11, "4": 0.12}, "straightness": 0.003},
            {"model": "distilled 2-rectified", "swd": {"1": 0.13}},
            {"model": "distilled base", "swd": {"1": 0.19}}]
    pictures = {"data": points()}
    for r in rows:
        pictures[(r["model"], 1)] = points()
    for name in (base, flow):
        pictures[(name, 4)] = points()
        pictures[(name, "trajectories")] = rng.normal(size=(11, 8, 2))
    results = {"rows": rows, "dataset": "eight_gaussians", "swd_floor": 0.066}
    fig = reflow.figure(tmp_path / "reflow.png", pictures, results)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 9  # data + 4 one-step panels; 2 trajectory + 2 four-step panels
    for ax in shown:
        assert _labels(ax) == ("$x_1$", "$x_2$"), ax.get_title()
        assert ax.get_legend() is not None, ax.get_title()
    legend = lambda ax: [t.get_text() for t in ax.get_legend().get_texts()]  # noqa: E731
    assert legend(shown[0]) == ["data (40)"] and shown[0].get_title() == "held-out data (40 points)"
    assert legend(shown[1]) == ["1 Euler step (40)"] and shown[1].get_title() == f"{base}\n1 step, SWD 2.500"
    assert legend(shown[3]) == ["one network evaluation (40)"]
    assert legend(shown[5]) == ["path (10 Euler steps)", "noise $x_0$ (t = 0)", "sample $x_1$ (t = 1)"]
    assert shown[5].get_title() == f"{base}\ntrajectories, straightness 2.7000"
    assert legend(shown[8]) == ["4 Euler steps (40)"] and shown[8].get_title() == f"{flow}\n4 Euler steps, SWD 0.120"
    assert "eight_gaussians" in fig._suptitle.get_text() and "floor 0.066" in fig._suptitle.get_text()
    assert (tmp_path / "reflow.png").stat().st_size > 0
