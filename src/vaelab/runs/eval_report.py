"""How an evaluation's metrics are shown: figures, TensorBoard and the printed table."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vaelab.evaluation.plotting import bar_figure, grid_figure, image_grid, save_figure


def make_figures(
    metrics: dict, samples: torch.Tensor | None, latent_sizes: dict[str, int] | None = None
) -> dict[str, Figure]:
    """The evaluation's figures by name: KL per latent dimension, variance of the posterior
    means per unit, reconstruction loss per digit, and (with samples) a sample grid and the
    classifier's class histogram of the samples. With ``latent_sizes`` of several groups (a
    hierarchy's layers) the per-dimension bars are marked by layer."""
    variances = metrics["test/active_unit_variance"]
    per_group = metrics.get("test/active_units_per_group") or {}
    layers = ""
    if latent_sizes and len(latent_sizes) > 1 and per_group:
        layers = "; " + ", ".join(
            f"{g} {per_group[g]} of {size}" for g, size in latent_sizes.items() if g in per_group
        )
    recon = metrics["test/recon_per_class"]
    figures = {}
    if "test/kl_per_dim" in metrics:  # absent when the prior does not factorize
        kl = metrics["test/kl_per_dim"]
        figures["kl_per_dim"] = bar_figure(
            kl,
            range(len(kl)),
            "KL per latent dimension (test mean)",
            "latent dimension",
            "KL (nats per image)",
            groups=latent_sizes,
        )
    figures |= {
        "active_units": bar_figure(
            variances,
            range(len(variances)),
            f"Active units: {metrics['test/active_units']} of {len(variances)}{layers} "
            f"(Var_x E[z|x] > {metrics['active_unit_threshold']})",
            "latent dimension",
            "variance of the posterior mean",
            threshold=metrics["active_unit_threshold"],
            groups=latent_sizes,
        ),
        "recon_per_class": bar_figure(
            recon,
            range(len(recon)),
            "Reconstruction loss per digit (test mean)",
            "digit",
            "recon (nats per image)",
        ),
    }
    if samples is not None:
        nrow = math.ceil(math.sqrt(len(samples)))
        figures["samples"] = grid_figure(image_grid(samples, nrow=nrow), "Samples from the prior")
        hist = metrics["samples/class_histogram"]
        figures["sample_classes"] = bar_figure(
            hist,
            range(len(hist)),
            f"Classes of {metrics['samples/num']} samples (entropy "
            f"{metrics['samples/class_entropy']:.3f} of {metrics['samples/max_entropy']:.3f})",
            "digit (classifier)",
            "fraction of samples",
            threshold=1 / len(hist),
        )
    return figures


def write_figures(figures: dict[str, Figure], folder: Path) -> None:
    """Each figure as ``<folder>/<name>.png`` (and closed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, folder / f"{name}.png")


def scalars(metrics: dict) -> dict[str, float]:
    """The metrics that are single numbers (booleans as 0/1), by name."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
    }


def write_tensorboard(
    metrics: dict, figures: dict[str, Figure], samples: torch.Tensor | None, folder: Path
) -> None:
    """Scalars under ``eval/``, per-dimension values as series over the dimension index, the
    figures and the sample grid, into a TensorBoard event file in ``folder``."""
    from vaelab.lit.loggers import SummaryWriter

    with SummaryWriter(log_dir=str(folder)) as writer:
        for name, value in scalars(metrics).items():
            writer.add_scalar(f"eval/{name}", value, 0)
        for name in (
            "test/kl_per_dim",
            "test/active_unit_variance",
            "test/recon_per_class",
            "samples/class_histogram",
        ):
            for i, value in enumerate(metrics.get(name, [])):
                writer.add_scalar(f"eval/{name}", value, i)
        for name, fig in figures.items():
            writer.add_figure(f"eval/{name}", fig, 0, close=False)
        if samples is not None:
            nrow = math.ceil(math.sqrt(len(samples)))
            writer.add_image("eval/sample_grid", image_grid(samples, nrow=nrow), 0)
        if "nll_note" in metrics:
            writer.add_text("eval/nll_note", metrics["nll_note"], 0)


def table_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, value, meaning) for each headline number of an evaluation."""
    m = metrics
    recon, latent_dim = m["test/recon_per_class"], len(m["test/active_unit_variance"])
    best = min(range(len(recon)), key=recon.__getitem__)
    worst = max(range(len(recon)), key=recon.__getitem__)
    rows = [
        (
            "test/loss",
            f"{m['test/loss']:.2f}",
            f"-ELBO (beta={m['beta']:g}), nats/image: {m['num_test_images']} test images, "
            f"recon averaged over {m['elbo_samples']} z each",
        ),
        ("test/recon", f"{m['test/recon']:.2f}", "-E_q[log p(x|z)], nats/image"),
        ("test/kl", f"{m['test/kl']:.2f}", "KL(q(z|x) || p(z)), nats/image"),
    ]
    if "test/nll" in m:
        flag = "" if m["nll_normalized"] else " (!)"
        rows.append(
            (
                f"test/nll (k={m['nll_k']})",
                f"{m['test/nll']:.2f}{flag}",
                f"-log p(x), importance sampled, nats/image; {m['nll_note']}",
            )
        )
    rows += [
        (
            "test/active_units",
            f"{m['test/active_units']} / {latent_dim}",
            f"units with Var_x(E_q[z_u|x]) > {m['active_unit_threshold']:g}"
            + "".join(
                f"; {g}: {n} / {m['latent_sizes'][g]}"
                for g, n in m.get("test/active_units_per_group", {}).items()
            ),
        ),
        (
            "test/recon_per_class",
            f"{recon[best]:.1f} .. {recon[worst]:.1f}",
            f"nats/image; easiest digit {best}, hardest {worst}",
        ),
    ]
    if "test/kl_per_dim" not in m:
        rows.append(
            (
                "test/kl_per_dim",
                "not defined",
                "the KL has no closed form per latent dimension (the prior or the posterior "
                "does not factorize); test/kl is its Monte Carlo estimate",
            )
        )
    else:
        kl = m["test/kl_per_dim"]
        top = max(range(len(kl)), key=kl.__getitem__)
        rows.append(
            (
                "test/kl_per_dim",
                f"max {kl[top]:.2f} (dim {top})",
                f"{sum(v > 0.01 for v in kl)} of {len(kl)} dims above 0.01 nats (all in "
                "metrics.json)",
            )
        )
    if "samples/num" in m:
        rows += [
            (
                "samples/class_entropy",
                f"{m['samples/class_entropy']:.3f} / {m['samples/max_entropy']:.3f}",
                f"mode coverage of {m['samples/num']} prior samples (log 10 = uniform)",
            ),
            (
                "samples/mean_confidence",
                f"{m['samples/mean_confidence']:.3f}",
                "mean top-class probability given by the digit classifier",
            ),
            (
                "samples/frechet_distance",
                f"{m['samples/frechet_distance']:.2f}",
                "classifier features, samples vs test images (train vs test images: "
                f"{m['samples/frechet_distance_train_vs_test']:.2f})",
            ),
            (
                "classifier/test_accuracy",
                f"{m['classifier/test_accuracy']:.4f}",
                "the digit classifier that scores the samples",
            ),
        ]
    return rows


def metrics_table(metrics: dict) -> Table:
    """The headline numbers as a rich Table (metric, value, meaning)."""
    table = Table(title=f"Evaluation of {metrics['checkpoint']}", title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("meaning")
    for row in table_rows(metrics):
        table.add_row(*map(escape, row))
    return table


def print_table(metrics: dict, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        console = console if console.is_terminal else Console(width=120)
    console.print(metrics_table(metrics))
    if "test/nll" in metrics and not metrics["nll_normalized"]:
        console.print(f"(!) test/nll is {metrics['nll_note']}")
