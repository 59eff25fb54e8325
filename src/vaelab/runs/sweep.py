"""Hydra callback that summarises a multirun: one row per job, metrics against each swept
parameter, as CSV, Markdown and a figure in the sweep dir. A job that fails writes
``error.txt`` into its dir instead of ``metrics.json``; the summary lists it with its error.
A job started again in its dir (the sweep run again, or resubmitted after a preemption)
continues what its earlier attempt left (``continue_job``)."""

from __future__ import annotations

import csv
import json
import logging
import traceback
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from vaelab.runs.run_dirs import CHECKPOINT_DIR

log = logging.getLogger(__name__)

METRICS = (
    "test/loss",
    "test/recon",
    "test/kl",
    "test/nll",
    "test/nll_k",
    "test/nll_images",
    "test/active_units",
    "val/loss",
    "val/active_units_last",
    "epochs",
    "fit_seconds",
)
ERROR_FILE = "error.txt"
METRICS_FILE = "metrics.json"  # written by a job that finished (vaelab.runs.report)
# what the last summary of this process found failed, for the exit status of train.py
_last_failures: list[str] = []


def record_failed_job(job_dir: Path, err: BaseException) -> Path:
    """Write ``error.txt``: the one-line error first, then the traceback."""
    job_dir.mkdir(parents=True, exist_ok=True)
    first_line = (str(err).splitlines() or [""])[0]
    text = f"{type(err).__name__}: {first_line}\n\n" + "".join(traceback.format_exception(err))
    path = job_dir / ERROR_FILE
    path.write_text(text)
    return path


def continue_job(cfg: DictConfig) -> dict | None:
    """For a job of a multirun whose dir holds an earlier attempt of it (the same sweep run
    again with its ``hydra.sweep.dir``, or the job resubmitted by a launcher after a
    preemption): the earlier metrics when that attempt finished (``metrics.json``; the job is
    skipped, and returns them); else None, with ``cfg.resume`` set to the job dir when the
    attempt left checkpoints (the job continues from its newest that loads) and the attempt's
    ``error.txt`` removed. One line says which. Nothing for a single run or a new job dir.

    In the job, not the launcher, so that it works the same under any launcher."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    job_dir = Path(cfg.paths.output_dir)
    job = f"Job {HydraConfig.get().job.num} ({job_dir})"
    if (job_dir / METRICS_FILE).is_file():
        log.info("%s finished before: skipped (its %s kept)", job, METRICS_FILE)
        return json.loads((job_dir / METRICS_FILE).read_text())
    (job_dir / ERROR_FILE).unlink(missing_ok=True)  # this attempt decides
    chosen = cfg.get("resume") is not None or cfg.get("ckpt_path") is not None
    if not chosen and any((job_dir / CHECKPOINT_DIR).glob("*.ckpt")):
        log.info("%s stopped before it finished: resuming from its checkpoints", job)
        with open_dict(cfg):
            cfg.resume = str(job_dir)
    return None


def finished_run(cfg: DictConfig) -> dict | None:
    """For ``resume=`` of a run that had finished (its metrics.json written) and is given the
    same length (``trainer.max_epochs`` and ``max_steps`` of its ``.hydra/config.yaml``): its
    metrics, after one line that says so, instead of testing it again; else None (the run
    continues, e.g. with a larger ``trainer.max_epochs``)."""
    run_dir = Path(cfg.paths.output_dir)
    metrics, saved = run_dir / METRICS_FILE, run_dir / ".hydra" / "config.yaml"
    if cfg.get("resume") is None or not metrics.is_file() or not saved.is_file():
        return None
    before = yaml.safe_load(saved.read_text()).get("trainer") or {}
    if any(before.get(k) != cfg.trainer.get(k) for k in ("max_epochs", "max_steps")):
        return None
    values = json.loads(metrics.read_text())
    log.info(
        "resume=%s: the run had finished (%s epochs; its %s is kept), nothing to continue; "
        "to train it longer, raise trainer.max_epochs (it was %s)",
        cfg.resume,
        values.get("epochs", "all its"),
        METRICS_FILE,
        before.get("max_epochs"),
    )
    return values


def job_error(job_dir: Path) -> str:
    """The one-line error a failed job recorded, or why there is none."""
    path = job_dir / ERROR_FILE
    if path.is_file():
        return path.read_text().splitlines()[0] if path.read_text() else "unknown error"
    return "no metrics.json and no error.txt (killed, or still running)"


def failed_jobs() -> str:
    """'' when the last summary had no failed job, else a one-line report."""
    return "; ".join(_last_failures)


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One dict per job dir of ``sweep_dir``: its overrides and its metrics.json values."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        params = dict(o.split("=", 1) for o in overrides if "=" in o)
        metrics_file = job_dir / METRICS_FILE
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        rows.append(
            {
                "job": job_dir.name,
                "params": params,
                "metrics": metrics,
                "status": "ok" if metrics else "failed",
                "error": "" if metrics else job_error(job_dir),
            }
        )
    return sorted(rows, key=lambda r: int(r["job"]) if r["job"].isdigit() else r["job"])


def swept_params(rows: list[dict]) -> list[str]:
    """The override keys whose values differ between jobs (all of them for a single job)."""
    keys = sorted({p for r in rows for p in r["params"]})
    varying = [k for k in keys if len({r["params"].get(k) for r in rows}) > 1]
    return varying if len(rows) > 1 else keys


def write_summary(sweep_dir: Path) -> list[dict]:
    """Write summary.csv, summary.md and summary.png into ``sweep_dir``; return the rows."""
    rows = collect_jobs(sweep_dir)
    if not rows:
        return rows
    params = swept_params(rows)
    header = ["job", *params, *METRICS, "resumed", "status", "error"]
    table = [
        [
            r["job"],
            *(r["params"].get(p, "") for p in params),
            *(r["metrics"].get(m, "") for m in METRICS),
            "yes" if r["metrics"].get("resumed_from") else "",
            r["status"],
            r["error"],
        ]
        for r in rows
    ]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])

    def cell(v):  # counts (active units, epochs) as the integers they are
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() else f"{v:.3f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    from vaelab.evaluation.plotting import save_figure, sweep_figure  # (matplotlib, torch)

    save_figure(sweep_figure(rows, params, METRICS[:3]), sweep_dir / "summary.png")
    log.info("Sweep summary written to %s", sweep_dir / "summary.md")
    return rows


class SweepSummary(Callback):
    """Registered in ``configs/hydra/default.yaml``; runs when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if rows:
            from vaelab.runs.tensorboard import write_sweep_experiment  # (TensorBoard)

            write_sweep_experiment(sweep_dir, swept_params(rows))
        failed = [r for r in rows if r["status"] == "failed"]
        _last_failures[:] = (
            [f"{len(failed)} of {len(rows)} jobs failed, see {sweep_dir / 'summary.md'}"]
            if failed
            else []
        )
        for r in failed:
            log.error("Job %s failed: %s", r["job"], r["error"])
