"""A failing job of a multirun keeps the other jobs running; the summary lists it with its
error."""

import csv

import pytest
import yaml
from conftest import run_script, synthetic_overrides

from vaelab.runs.sweep import collect_jobs, record_failed_job


@pytest.mark.slow
def test_failed_job_is_listed_with_its_error_and_the_others_finish(synthetic_root, tmp_path):
    args = synthetic_overrides(synthetic_root, tmp_path) + [
        "trainer.max_epochs=1",
        "model.hidden_dims=[32]",
        "callbacks.figures=null",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    result = run_script("train.py", ["-m", *args, "model.latent_dim=0,4"])
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: 1 of 2 jobs failed, see {sweep / 'summary.md'}" in result.stderr
    error = (
        "VaelabError: model.latent_dim=0 must be an integer >= 1 (a list of them, one per "
        "stochastic layer, for a hierarchy)"
    )
    assert (sweep / "0" / "error.txt").read_text().startswith(error)
    assert (sweep / "1" / "metrics.json").is_file()
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"], r["error"]) for r in rows] == [
        ("0", "failed", error),
        ("1", "ok", ""),
    ]
    assert float(rows[1]["test/loss"]) > 0
    assert f"| failed | {error} |" in (sweep / "summary.md").read_text()


def test_job_without_metrics_or_error_file_is_reported_as_such(tmp_path):
    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={job}"]))
    record_failed_job(tmp_path / "1", RuntimeError("CUDA out of memory\nmore detail"))
    rows = collect_jobs(tmp_path)
    assert [r["error"] for r in rows] == [
        "no metrics.json and no error.txt (killed, or still running)",
        "RuntimeError: CUDA out of memory",
    ]
