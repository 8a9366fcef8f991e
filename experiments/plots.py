"""Matplotlib figures written by the experiments (headless).

Every function saves its figure to `path` and returns the (closed) Figure, so a
test can read its labels back."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path, dpi=120):
    """Lays the figure out, writes it to `path` and closes it; returns it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return fig


def sample_title(model, method, num_steps=None, guidance=None, step=None, params="EMA") -> str:
    """The title of a sample plot: "<model>, <sampler> sampler, <N> steps, guidance
    w=<w>, training step <s> (<params> weights)", each part left out when None.

    model: the SDE or family (e.g. "vpsde", "flow_matching"); method: the sampler
    (config.sample.method); num_steps: the sampler's steps (None for an adaptive
    solver or a one-shot sampler); guidance: the classifier-free guidance weight;
    step: the training step of the sampled checkpoint; params: which weights were
    sampled ("EMA"/"ema", "raw"; None leaves it out)."""
    parts = [str(model)] if model is not None else []
    if method is not None:
        parts.append(f"{method} sampler")
    if num_steps is not None:
        parts.append(f"{int(num_steps)} step{'' if int(num_steps) == 1 else 's'}")
    if guidance is not None:
        parts.append(f"guidance w={float(guidance):g}")
    if step is not None:
        parts.append(f"training step {int(step)}")
    title = ", ".join(parts)
    if params is not None:
        name = "EMA" if str(params).lower() == "ema" else str(params)
        title = f"{title} ({name} weights)" if title else f"{name} weights"
    return title


def plane_axes(ax, low, high):
    """Equal-aspect axes of the 2-D data plane, labelled by coordinate."""
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")


def scatter_samples(path, samples, data, lim=4.5, title=""):
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, points, name in ((axes[0], data, "held-out data"), (axes[1], samples, "model samples")):
        points = np.asarray(points)
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
        ax.set_title(f"{name} ({len(points)} points)")
        plane_axes(ax, -lim, lim)
    fig.suptitle(title)
    return save(fig, path)


def density_heatmap(path, log_density_GG, lim, title=""):
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(np.exp(np.asarray(log_density_GG)), origin="lower",
                   extent=(-lim, lim, -lim, lim), cmap="viridis")
    fig.colorbar(im, ax=ax, label="model density p(x)")
    plane_axes(ax, -lim, lim)
    ax.set_title(title)
    return save(fig, path)


def _loss_axes(ax, losses):
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (the family's objective, per example)")
    # log scale where it can show the curve; GAN and energy losses can be <= 0
    ax.set_yscale("log" if np.all(np.asarray(losses) > 0) else "symlog")


def loss_curve(path, steps, losses, title="training loss"):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    # markers too: a short run has only a few logged points
    ax.plot(np.asarray(steps), np.asarray(losses), lw=0.8, marker="." if len(steps) < 50 else None)
    _loss_axes(ax, losses)
    ax.set_title(title)
    return save(fig, path)


def image_grid(path, grid_HWC, vmax, title=""):
    grid = np.asarray(grid_HWC)
    fig, ax = plt.subplots(figsize=(5, 5 * grid.shape[0] / grid.shape[1]))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid / vmax, cmap="gray_r", vmin=0, vmax=vmax)
    ax.set_axis_off()
    ax.set_title(title)
    return save(fig, path)


def loss_curves(path, curves: dict, title="training loss (mean over seeds, band: min-max)"):
    """curves: label -> array (seeds, steps)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, losses in curves.items():
        losses = np.asarray(losses)
        steps = np.arange(1, losses.shape[1] + 1)
        line, = ax.plot(steps, losses.mean(0), lw=0.8, label=label)
        ax.fill_between(steps, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
    _loss_axes(ax, np.concatenate([np.ravel(c) for c in curves.values()]))
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save(fig, path)


def density_comparison(path, model_GG, true_GG, samples, box, title=""):
    """A learned density beside the true one on the same colour scale (rows of the
    grids are y, over box x box), and samples from the model."""
    low, high = box
    extent = (low, high, low, high)
    vmax = float(max(np.max(model_GG), np.max(true_GG)))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, grid, name in ((axes[0], model_GG, "model exp(-E)/Z"), (axes[1], true_GG, "true density")):
        im = ax.imshow(np.asarray(grid), origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(name)
    fig.colorbar(im, ax=axes[:2].tolist(), label="density p(x)", shrink=0.8)
    points = np.asarray(samples)
    axes[2].scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
    axes[2].set_title(f"MALA samples ({len(points)})")
    for ax in axes:
        plane_axes(ax, low, high)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)  # no tight_layout: it does not fit a colour bar shared by two axes
    plt.close(fig)
    return fig


def scatter_per_seed(path, samples_KN2, titles, lim=4.5, columns=5, suptitle=""):
    """One small scatter plot of 2-D samples per ensemble member (K panels)."""
    samples_KN2 = np.asarray(samples_KN2)
    k = samples_KN2.shape[0]
    columns = min(columns, k)
    rows = -(-k // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.5 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= k:
            ax.axis("off")
            continue
        ax.scatter(samples_KN2[i, :, 0], samples_KN2[i, :, 1], s=1.0, alpha=0.5, linewidths=0)
        ax.set_title(titles[i], fontsize=7)
        plane_axes(ax, -lim, lim)
        ax.tick_params(labelsize=6)
    fig.suptitle(suptitle, fontsize=9)
    return save(fig, path)
