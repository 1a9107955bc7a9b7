"""Figures shared by the notebooks: image grids, learning curves, 2-D scatter by label.

Every function draws on a Matplotlib ``Axes`` (created when not given) and returns the
``Figure``, so a notebook cell ends with the call and shows the figure once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np


def _figure(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def image_grid(
    images: np.ndarray,
    labels: Sequence | None = None,
    *,
    columns: int = 8,
    title: str | None = None,
    label_names: Sequence[str] | None = None,
    cmap: str = "gray_r",
):
    """A grid of images ``[n, height, width, 1]`` (or ``[n, height, width]``) in [0, 1],
    each captioned with its label when ``labels`` is given."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.1 * columns, 1.1 * rows + (0.4 if title else 0)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        if labels is not None:
            label = labels[i]
            text = label_names[int(label)] if label_names is not None else str(label)
            ax.set_title(text, fontsize=9, pad=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_rows(
    rows: Mapping[str, np.ndarray],
    *,
    title: str | None = None,
    cmap: str = "gray_r",
    signed: bool = False,
):
    """Several rows of images side by side, one row per entry (e.g. original / reconstruction),
    the row names written on the left. ``signed=True`` shows signed images (such as principal
    directions) on a diverging colour map, each scaled to its own largest absolute value."""
    names = list(rows)
    columns = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(
        len(names), columns, figsize=(1.0 * columns + 1.2, 1.05 * len(names)), squeeze=False
    )
    for r, name in enumerate(names):
        images = np.asarray(rows[name])
        if images.ndim == 4:
            images = images[..., 0]
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                top = (float(np.abs(images[c]).max()) or 1.0) if signed else 1.0
                ax.imshow(images[c], cmap="RdBu_r" if signed else cmap,
                          vmin=-top if signed else 0.0, vmax=top, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves(
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    title: str | None = None,
    logy: bool = False,
    logx: bool = False,
    hlines: Mapping[str, float] | None = None,
    x: Sequence[float] | None = None,
    marker: str | None = None,
    dashed: Sequence[str] = (),
    ylim: tuple[float, float] | None = None,
    ax=None,
):
    """Curves: one line per named series against ``x`` (default 1, 2, ... as epochs); named
    horizontal reference lines (grey, dotted, in the legend); ``dashed`` names series drawn
    dashed (e.g. one that lies on top of another)."""
    fig, ax = _figure(ax, (6, 3.5))
    for name, values in series.items():
        xs = np.arange(1, len(values) + 1) if x is None else np.asarray(x)
        ax.plot(xs, values, label=name, marker=marker, linestyle="--" if name in dashed else "-")
    greys = ("0.35", "0.6", "0.8")
    for i, (name, value) in enumerate((hlines or {}).items()):
        ax.axhline(value, linestyle=":", linewidth=1.5, color=greys[i % len(greys)], label=name)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) + len(hlines or {}) > 1:
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def scatter_by_label(
    points: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    title: str | None = None,
    xlabel: str = "$z_1$",
    ylabel: str = "$z_2$",
    label_names: Sequence[str] | None = None,
    centers: np.ndarray | None = None,
    ax=None,
    size: float = 3.0,
):
    """2-D points coloured by integer label (codes, or samples of a mixture), with an optional
    set of centres marked as crosses."""
    fig, ax = _figure(ax, (5, 5))
    points = np.asarray(points)
    if centers is not None:  # drawn first and thin, so that no sample hides under a marker
        ax.scatter(centers[:, 0], centers[:, 1], marker="+", color="black", s=40, linewidths=0.6,
                   zorder=1, label="modes")
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.5, zorder=2)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        colours = label_colours(len(classes))
        for i, label in enumerate(classes):
            chosen = labels == label
            name = label_names[int(label)] if label_names is not None else str(label)
            ax.scatter(
                points[chosen, 0], points[chosen, 1], s=size, alpha=0.6,
                color=colours[i], label=name, zorder=2,
            )
        if len(classes) <= 10:  # beside the axes, never over the data
            ax.legend(markerscale=4, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1),
                      frameon=False, borderaxespad=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def label_colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10 labels, tab20 + tab20b up to 40 (no colour
    repeats, as it would with tab20 alone on grid25's 25 modes), then a hue circle."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 40:
        return ([plt.get_cmap("tab20")(i) for i in range(20)]
                + [plt.get_cmap("tab20b")(i) for i in range(20)])[:n]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def class_counts(
    labels: Mapping[str, np.ndarray],
    *,
    label_names: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
):
    """Fraction of examples per class, one group of bars per named label array."""
    fig, ax = _figure(ax, (7, 3))
    classes = np.unique(np.concatenate([np.asarray(v) for v in labels.values()]))
    width = 0.8 / len(labels)
    for i, (name, values) in enumerate(labels.items()):
        values = np.asarray(values)
        fractions = [(values == c).mean() for c in classes]
        ax.bar(np.arange(len(classes)) + i * width, fractions, width=width, label=name)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2)
    names = [label_names[int(c)] if label_names is not None else str(c) for c in classes]
    ax.set_xticklabels(names, rotation=30 if label_names is not None else 0, fontsize=9)
    ax.set_xlabel("class")
    ax.set_ylabel("fraction of examples")
    if title:
        ax.set_title(title)
    if len(labels) > 1:  # in a band of its own above the tallest bar
        top = max((np.asarray(v) == c).mean() for v in labels.values() for c in classes)
        ax.set_ylim(0, top * 1.3)
        ax.legend(loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout()
    return fig


def architecture(
    sizes: Sequence[int],
    *,
    code_index: int | None = None,
    names: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
):
    """An autoencoder drawn as one bar per layer, its height proportional to the layer's width
    (on a square-root scale so that a 784-unit input and a 2-unit code both stay visible), the
    code layer highlighted, encoder and decoder labelled."""
    fig, ax = _figure(ax, (8, 3.2))
    sizes = list(sizes)
    code_index = len(sizes) // 2 if code_index is None else code_index
    heights = np.sqrt(np.asarray(sizes, dtype=float))
    heights = heights / heights.max()
    for i, (size, height) in enumerate(zip(sizes, heights)):
        colour = "tab:orange" if i == code_index else ("tab:blue" if i < code_index else "tab:green")
        ax.add_patch(plt.Rectangle((i - 0.15, -height / 2), 0.3, height, color=colour, alpha=0.8))
        ax.text(i, -height / 2 - 0.07, str(size), ha="center", va="top", fontsize=9)
        if names is not None:
            ax.text(i, height / 2 + 0.05, names[i], ha="center", va="bottom", fontsize=9)
        if i + 1 < len(sizes):
            nxt = heights[i + 1]
            ax.fill([i + 0.15, i + 0.85, i + 0.85, i + 0.15],
                    [height / 2, nxt / 2, -nxt / 2, -height / 2], color="gray", alpha=0.15)
    span = dict(arrowstyle="<->", color="gray")
    ax.annotate("", (0, 0.68), (code_index, 0.68), arrowprops=span)
    ax.text(code_index / 2, 0.72, "encoder f", ha="center", fontsize=10, color="tab:blue")
    ax.annotate("", (code_index, 0.68), (len(sizes) - 1, 0.68), arrowprops=span)
    ax.text((code_index + len(sizes) - 1) / 2, 0.72, "decoder g", ha="center", fontsize=10,
            color="tab:green")
    if names is None:
        ax.text(code_index, heights[code_index] / 2 + 0.05, "code z", ha="center", fontsize=10,
                color="tab:orange")
    ax.set_xlim(-0.6, len(sizes) - 0.4)
    ax.set_ylim(-0.8, 0.85)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def latent_manifold(decode, *, n: int = 15, image_shape=(8, 8, 1), title: str | None = None):
    """The images a decoder draws over a 2-D code space: ``decode(z)`` on an ``n x n`` grid of
    ``z`` placed at the quantiles 5 % .. 95 % of N(0, 1) along each axis, so that each cell
    covers the same prior probability (Kingma and Welling 2014, figure 4)."""
    from scipy.stats import norm

    ticks = norm.ppf(np.linspace(0.05, 0.95, n))
    grid = np.array([[z1, z2] for z2 in ticks[::-1] for z1 in ticks], dtype=np.float32)
    images = np.asarray(decode(grid))[..., 0]
    # a one-pixel white margin around each image keeps neighbouring cells apart
    images = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    height, width = image_shape[0] + 2, image_shape[1] + 2
    canvas = images.reshape(n, n, height, width).transpose(0, 2, 1, 3).reshape(n * height, n * width)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    positions = (np.arange(n) + 0.5) * width
    ax.set_xticks(positions[:: max(1, n // 5)], [f"{t:.1f}" for t in ticks[:: max(1, n // 5)]])
    ax.set_yticks(positions[:: max(1, n // 5)], [f"{t:.1f}" for t in ticks[::-1][:: max(1, n // 5)]])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title or "Decoded means over the code space")
    fig.tight_layout()
    return fig


def mixture_snapshots(
    rows: Mapping[str, Sequence[tuple[int, np.ndarray]]],
    centers: np.ndarray,
    *,
    data: np.ndarray | None = None,
    step_label: str = "step",
    title: str | None = None,
    size: float = 2.0,
):
    """A grid of 2-D sample scatters: one row per named run, one column per snapshot
    ``(step, points [n, 2])``, drawn over the data (grey, enlarged so that a mode without samples
    shows) with the mode centres (small crosses on top)."""
    names = list(rows)
    columns = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), columns, figsize=(2.1 * columns, 2.2 * len(names)),
                             squeeze=False, sharex=True, sharey=True)
    centers = np.asarray(centers)
    span = np.abs(centers).max() * 1.35
    for r, name in enumerate(names):
        for c, ax in enumerate(axes[r]):
            if c >= len(rows[name]):
                ax.set_axis_off()
                continue
            step, points = rows[name][c]
            if data is not None:  # drawn large enough to stay visible where no sample lands
                ax.scatter(data[:, 0], data[:, 1], s=max(6 * size, 10), color="0.65", zorder=1)
            ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.5, color="C0", zorder=2)
            ax.scatter(centers[:, 0], centers[:, 1], marker="+", s=12, linewidths=0.7, color="black",
                       zorder=3)
            ax.set_xlim(-span, span)
            ax.set_ylim(-span, span)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or len(rows[name]) != columns:
                ax.set_title(f"{step_label} {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def tile(images: np.ndarray, columns: int = 8, pad: int = 1) -> np.ndarray:
    """``[n, h, w(, 1)]`` images as one ``[rows * (h + pad) - pad, columns * (w + pad) - pad]``
    array (padding at 0, i.e. white on ``gray_r``): many small images in one panel."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    n, h, w = images.shape
    rows = int(np.ceil(n / columns))
    out = np.zeros((rows * (h + pad) - pad, columns * (w + pad) - pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = image
    return out


def model_gallery(
    panels: Mapping[str, Mapping[str, np.ndarray | str]],
    *,
    columns: int = 6,
    title: str | None = None,
    cmap: str = "gray_r",
):
    """One column per model, one row per kind of output (e.g. ``"samples"``,
    ``"reconstructions"``): each cell tiles that model's images; a string instead of images
    leaves the cell empty with that text (e.g. "no encoder" for a GAN's reconstructions)."""
    models = list(panels)
    kinds = list(dict.fromkeys(kind for outputs in panels.values() for kind in outputs))
    fig, axes = plt.subplots(len(kinds), len(models), figsize=(2.6 * len(models), 2.7 * len(kinds)),
                             squeeze=False)
    for c, model in enumerate(models):
        for r, kind in enumerate(kinds):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            images = panels[model].get(kind, "")
            if isinstance(images, str):
                ax.text(0.5, 0.5, images, ha="center", va="center", color="0.4", transform=ax.transAxes)
                for spine in ax.spines.values():
                    spine.set_visible(False)
            else:
                ax.imshow(tile(images, columns), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            if r == 0:
                ax.set_title(model)
            if c == 0:
                ax.set_ylabel(kind)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
