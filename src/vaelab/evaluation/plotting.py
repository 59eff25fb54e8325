"""Figures: image grids for TensorBoard and matplotlib figures for the PNGs. No metrics here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vaelab.errors import writing  # noqa: E402


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> one [C, H', W'] image with ``nrow`` images per row.

    Hand-written because torchvision's ``make_grid`` cannot be imported here (see docs/data.md).
    """
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid


def grid_figure(grid: torch.Tensor, title: str) -> Figure:
    """A titled figure of one grid from ``image_grid``."""
    _, height, width = grid.shape
    fig, ax = plt.subplots(figsize=(max(4, width / 40), max(2, height / 40) + 0.5))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig


def latent_space_figure(points: torch.Tensor, labels: torch.Tensor, title: str) -> Figure:
    """Scatter of 2-d latent points [N, 2] coloured by digit label [N]."""
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(
        points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=9.5
    )
    fig.colorbar(scatter, ax=ax, ticks=range(10), label="digit")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """loss, recon and kl (nats per image) against epoch, train and val, from per-epoch dicts
    with keys like ``train/loss`` and ``epoch``."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, term in zip(axes, ("loss", "recon", "kl"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [(h["epoch"], h[f"{split}/{term}"]) for h in history if f"{split}/{term}" in h]
            if pts:
                epochs, values = zip(*pts, strict=True)
                ax.plot(epochs, values, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{term} (nats per image)")
        ax.set_title(term)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` as a PNG at ``path`` and close it; a full disk or an unwritable folder is
    a one-line ``StorageError``."""
    try:
        with writing(path, "a figure"):
            # zlib level 1, not 6: quicker to encode, files about 10 % larger
            fig.savefig(path, dpi=120, bbox_inches="tight", pil_kwargs={"compress_level": 1})
    finally:
        plt.close(fig)


def _as_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sweep_figure(rows: Sequence[Mapping], params: Sequence[str], metrics: Sequence[str]) -> Figure:
    """One panel per (swept parameter, metric): the final metric of each job against the
    parameter's value (a line for numbers, bars for names). ``rows`` as from
    ``vaelab.runs.sweep.collect_jobs``."""
    params = list(params) or ["job"]
    fig, axes = plt.subplots(
        len(params), len(metrics), squeeze=False, figsize=(4.2 * len(metrics), 3.3 * len(params))
    )
    for i, param in enumerate(params):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            pts = [
                (r["job"] if param == "job" else r["params"].get(param), r["metrics"].get(metric))
                for r in rows
            ]
            pts = [(x, y) for x, y in pts if x is not None and isinstance(y, (int, float))]
            numeric = all(_as_number(x) is not None for x, _ in pts)
            if numeric and pts:
                by_x: dict[float, list[float]] = {}
                for x, y in pts:
                    by_x.setdefault(_as_number(x), []).append(y)
                xs = sorted(by_x)
                ax.plot(xs, [sum(by_x[x]) / len(by_x[x]) for x in xs], "-o")
            elif pts:
                ax.bar([str(x) for x, _ in pts], [y for _, y in pts])
            ax.set_xlabel(param)
            ax.set_ylabel(f"{metric} (nats per image)")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def bar_figure(
    values: Sequence[float],
    labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    threshold: float | None = None,
) -> Figure:
    """Bars of ``values`` named by ``labels``, with an optional dashed horizontal line."""
    fig, ax = plt.subplots(figsize=(max(5, 0.28 * len(values) + 2), 3.6))
    positions = range(len(values))
    ax.bar(positions, [float(v) for v in values], color="tab:blue")
    ax.set_xticks(positions, [str(label) for label in labels])
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(values) > 16:
        ax.tick_params(axis="x", labelsize=7, rotation=90)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
