"""Hydra callback that summarises a multirun: one row per job, metrics against each swept
parameter, as CSV, Markdown and a figure in the sweep dir."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vaelab.plotting import save_figure, sweep_figure

log = logging.getLogger(__name__)

METRICS = ("test/loss", "test/recon", "test/kl", "val/loss", "epochs", "fit_seconds")


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One dict per job dir of ``sweep_dir``: its overrides and its metrics.json values."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        params = dict(o.split("=", 1) for o in overrides if "=" in o)
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        rows.append(
            {
                "job": job_dir.name,
                "params": params,
                "metrics": metrics,
                "status": "ok" if metrics else "failed",
            }
        )
    return sorted(rows, key=lambda r: int(r["job"]) if r["job"].isdigit() else r["job"])


def write_summary(sweep_dir: Path) -> list[dict]:
    """Write summary.csv, summary.md and summary.png into ``sweep_dir``; return the rows."""
    rows = collect_jobs(sweep_dir)
    if not rows:
        return rows
    params = sorted({p for r in rows for p in r["params"]})
    header = ["job", *params, *METRICS, "status"]
    table = [
        [
            r["job"],
            *(r["params"].get(p, "") for p in params),
            *(r["metrics"].get(m, "") for m in METRICS),
            r["status"],
        ]
        for r in rows
    ]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    save_figure(sweep_figure(rows, params, METRICS[:3]), sweep_dir / "summary.png")
    log.info("Sweep summary written to %s", sweep_dir / "summary.md")
    return rows


class SweepSummary(Callback):
    """Registered in ``configs/hydra/default.yaml``; runs when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_summary(Path(config.hydra.sweep.dir))
