"""Figures: image grids for TensorBoard and matplotlib figures for the PNGs. No metrics here."""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from vaelab.errors import writing

# Figures are built without pyplot (no global figure list, no window, nothing to close), and
# one at a time: matplotlib's fonts are shared by every figure and it is not thread-safe,
# while the training callbacks draw the end of fit's PNGs in a worker thread.
# Hold DRAWING around any other drawing of a figure (e.g. SummaryWriter.add_figure).
DRAWING = threading.RLock()


def _drawing(function):
    """``function``, holding ``DRAWING`` while it runs."""

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with DRAWING:
            return function(*args, **kwargs)

    return locked


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots):
    """(figure with an Agg canvas, its axes): ``pyplot.subplots`` without pyplot's state."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots)


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> one [C, H', W'] image with ``nrow`` images per row, white
    between them.

    Hand-written because torchvision's ``make_grid`` cannot be imported here (see docs/data.md).
    """
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    cells = torch.ones(rows * nrow, c, h + padding, w + padding)
    cells[:n, :, :h, :w] = images.detach().float().cpu().clamp(0, 1)
    grid = cells.view(rows, nrow, c, h + padding, w + padding).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, rows * (h + padding), nrow * (w + padding))
    return torch.nn.functional.pad(grid, (padding, 0, padding, 0), value=1.0)


@_drawing
def grid_figure(grid: torch.Tensor, title: str) -> Figure:
    """A titled figure of one grid from ``image_grid``."""
    _, height, width = grid.shape
    fig, ax = new_figure((max(4, width / 40), max(2, height / 40) + 0.5))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig


@_drawing
def latent_space_figure(
    points: torch.Tensor, labels: torch.Tensor, title: str, ticks: bool = True
) -> Figure:
    """Scatter of 2-d latent points [N, 2] coloured by digit label [N]; ``ticks=False``:
    axes without ticks, labelled "first/second coordinate" (``LatentSpacePlot``'s frame)."""
    fig, ax = new_figure((6, 5))
    scatter = ax.scatter(
        points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=9.5
    )
    fig.colorbar(scatter, ax=ax, ticks=range(10), label="digit")
    ax.set_title(title)
    if not ticks:  # before the layout, which would otherwise measure ticks that go
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("first coordinate")
        ax.set_ylabel("second coordinate")
    fig.tight_layout()
    return fig


class LatentSpacePlot:
    """The latent space of ``latent_space_figure`` at a cost that suits every epoch, as a PNG
    for TensorBoard: the frame (axes, the digits' colour bar, ``title``) is drawn by
    matplotlib on the first call and kept as a palette image; each call paints its points, 2 x
    2 pixels in their digit's colour, into the axes' pixels of a copy, scaled to the points'
    range with 5 % margins (so the axes carry no ticks). Hand-written because matplotlib's
    Agg draws 5000 markers of their own colours one by one: about 0.19 s a drawing on a
    2-core CPU, 3 % of a training epoch. A palette PNG is a third of the RGB one's bytes,
    which TensorBoard's writer checksums in Python."""

    FRAME_COLOURS = 240  # the frame's palette; the 10 digits' colours follow

    def __init__(self, title: str) -> None:
        self.title = title
        self._frame: np.ndarray | None = None  # [H, W] uint8 palette indices
        self._palette: list[int] = []
        self._box = (0, 0, 0, 0)  # the axes' pixels inside the spines: top, bottom, left, right

    @property
    def shape(self) -> tuple[int, int, int]:
        """[C, H, W] of the images ``png`` encodes (after its first call)."""
        return (3, *self._frame.shape) if self._frame is not None else (3, 0, 0)

    @_drawing
    def _draw_frame(self) -> None:
        fig = latent_space_figure(torch.zeros(0, 2), torch.zeros(0), self.title, ticks=False)
        ax = fig.axes[0]
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        frame = Image.fromarray(rgb).quantize(self.FRAME_COLOURS, Image.Quantize.FASTOCTREE)
        self._frame = np.asarray(frame).copy()
        palette = frame.getpalette()[: 3 * self.FRAME_COLOURS]
        palette += [0] * (3 * self.FRAME_COLOURS - len(palette))
        cmap = ax.collections[0].get_cmap()
        for i in range(10):
            palette += [round(255 * c) for c in cmap(i)[:3]]
        self._palette = palette
        height, inset = rgb.shape[0], 2
        box = ax.get_window_extent()  # display pixels, origin at the bottom left
        self._box = (
            height - int(box.y1) + inset,
            height - int(box.y0) - inset,
            int(box.x0) + inset,
            int(box.x1) - inset,
        )

    def png(self, points: torch.Tensor, labels: torch.Tensor) -> bytes:
        """``points`` [N, 2] coloured by digit ``labels`` [N], later points over earlier
        ones, as PNG bytes of an image of ``shape``."""
        if self._frame is None:
            self._draw_frame()
        image = torch.from_numpy(self._frame.copy())
        top, bottom, left, right = self._box
        points = points.detach().float().cpu()
        if len(points):
            low, high = points.min(0).values, points.max(0).values
            span = (high - low).clamp(min=1e-12)
            unit = ((points - low + 0.05 * span) / (1.1 * span)).clamp(0, 1)
            cols = left + (unit[:, 0] * (right - left - 2)).long()
            rows = bottom - 2 - (unit[:, 1] * (bottom - top - 2)).long()
            colours = (self.FRAME_COLOURS + labels.cpu().long() % 10).to(torch.uint8)
            for dr in (0, 1):
                for dc in (0, 1):
                    image[rows + dr, cols + dc] = colours
        frame = Image.fromarray(image.numpy(), mode="P")
        frame.putpalette(self._palette)
        buffer = io.BytesIO()
        frame.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def encode_png(image: torch.Tensor) -> bytes:
    """[C, H, W] (C = 1 or 3) in [0, 1] or uint8 -> PNG bytes: one channel stays one (grey),
    zlib level 1. (TensorBoard's ``add_image`` triples a grey image to RGB and encodes at
    level 6: three times the time of this.)"""
    if image.dtype != torch.uint8:
        image = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@_drawing
def training_curves_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """loss, recon and kl (nats per image) against epoch, train and val, from per-epoch dicts
    with keys like ``train/loss`` and ``epoch``."""
    fig, axes = new_figure((13, 3.8), 1, 3)
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


@_drawing
def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` as a PNG at ``path`` and close it; a full disk or an unwritable folder is
    a one-line ``StorageError``."""
    with writing(path, "a figure"):
        # zlib level 1, not 6: quicker to encode, files about 10 % larger
        fig.savefig(path, dpi=120, bbox_inches="tight", pil_kwargs={"compress_level": 1})


def _as_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@_drawing
def sweep_figure(rows: Sequence[Mapping], params: Sequence[str], metrics: Sequence[str]) -> Figure:
    """One panel per (swept parameter, metric): the final metric of each job against the
    parameter's value (a line for numbers, bars for names). ``rows`` as from
    ``vaelab.runs.sweep.collect_jobs``."""
    params = list(params) or ["job"]
    fig, axes = new_figure(
        (4.2 * len(metrics), 3.3 * len(params)), len(params), len(metrics), squeeze=False
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


@_drawing
def bar_figure(
    values: Sequence[float],
    labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    threshold: float | None = None,
    groups: Mapping[str, int] | None = None,
) -> Figure:
    """Bars of ``values`` named by ``labels``, with an optional dashed horizontal line; with
    ``groups`` (name: number of bars, in order, e.g. a hierarchy's layers) a vertical line
    between groups and each group's name above its bars."""
    fig, ax = new_figure((max(5, 0.28 * len(values) + 2), 3.6))
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
    if groups is not None and len(groups) > 1:
        start = 0
        for name, size in groups.items():
            if start:
                ax.axvline(start - 0.5, color="black", linewidth=1)
            ax.text(
                start - 0.5 + size / 2, 1.0, name, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9,
            )  # fmt: skip
            start += size
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
