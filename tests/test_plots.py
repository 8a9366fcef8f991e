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
