"""What the terminal shows when a run ends: final metrics, where the outputs are, and the
command that opens TensorBoard."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vaelab.errors import writing

log = logging.getLogger(__name__)

SHOWN = (
    ("test/loss", "test loss (nats/image)"),
    ("test/recon", "test recon"),
    ("test/kl", "test KL"),
    ("tested_checkpoint", "tested"),
    ("val/loss", "best val loss"),
    ("val/active_units_last", "active units (val)"),
    ("epochs", "epochs"),
    ("fit_seconds", "fit time (s)"),
)


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def summary_table(metrics: dict) -> Table:
    """The headline metrics of a finished run."""
    table = Table(title="vaelab run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, label in SHOWN:
        if key in metrics:
            value = metrics[key]
            if key == "tested_checkpoint" and value.endswith(".ckpt"):
                value = Path(value).name
            table.add_row(label, _fmt(value))
        if key == "val/active_units_last":  # a hierarchy: the test's active units per layer
            for name in (k for k in metrics if k.startswith("test/active_units/")):
                table.add_row(
                    f"active units of {name.rsplit('/', 1)[1]} (test)", _fmt(metrics[name])
                )
    return table


def output_lines(metrics: dict, run_dir: Path, tensorboard: Path | None = None) -> list[str]:
    """Where the run's outputs are, one 'name: path' line each, never shortened."""
    lines = [f"run dir:         {run_dir}"]
    if metrics.get("best_checkpoint"):
        lines.append(f"best checkpoint: {metrics['best_checkpoint']}")
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        lines.append(f"last checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}")
    if (run_dir / "figures").is_dir():
        lines.append(f"figures:         {run_dir / 'figures'}")
    lines.append(f"metrics:         {run_dir / 'metrics.json'}")
    if tensorboard is not None:
        lines.append(f"TensorBoard:     tensorboard --logdir {tensorboard}")
    return lines


def print_summary(metrics: dict, run_dir: Path, tensorboard: Path | None = None) -> None:
    console = Console(soft_wrap=True, highlight=False)
    console.print(summary_table(metrics))
    for line in output_lines(metrics, run_dir, tensorboard):
        console.print(line, markup=False)


def write_metrics(metrics: dict, path: Path) -> None:
    """``metrics`` as sorted, indented JSON at ``path``; a full disk or an unwritable folder
    is a one-line ``StorageError``."""
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    with writing(path, "the metrics", len(text.encode())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    log.info("Metrics written to %s", path)
