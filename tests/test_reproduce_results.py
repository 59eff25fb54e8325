"""scripts/reproduce_results.py end to end on the synthetic data set, on a budget of a few
optimizer steps: the report's tables must hold the numbers of the runs' metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_train, run_script, synthetic_overrides

# the synthetic data set's overrides; the script sets the data dir, the epochs and the run dirs
BUDGET = [
    *(o for o in synthetic_overrides(Path(), Path()) if not o.startswith(("paths.", "trainer."))),
    "trainer.limit_train_batches=2",
]


def reproduce(data_root: Path, tmp: Path, *args: str):
    result = run_script(
        "scripts/reproduce_results.py",
        ["--data-root", str(data_root), "--log-dir", str(tmp / "logs"), "--out",
         str(tmp / "results.md"), "--epochs", "1", *args, "--override", *BUDGET],
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return (tmp / "results.md").read_text()


def section_rows(report: str, name: str) -> list[dict[str, str]]:
    """The rows of the table under ``## name``, as {column: cell}."""
    section = report.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
            for ln in lines[2:]]  # fmt: skip


def check_row(row: dict[str, str], metrics: dict, latent_dim: int) -> None:
    assert row["status"] == "ok"
    assert row["epochs"] == str(metrics["epochs"]) == "1"
    assert row["steps"] == "2"  # trainer.limit_train_batches=2
    assert row["fit (s)"] == f"{metrics['fit_seconds']:.1f}"
    for column, key in (("test −ELBO", "test/loss"), ("test recon", "test/recon"),
                        ("test KL", "test/kl")):  # fmt: skip
        assert row[column] == f"{metrics[key]:.2f}"
    assert row["test NLL"].split()[0] == f"{metrics['test/nll']:.2f}"
    assert row["NLL k"] == f"{metrics['test/nll_k']:.0f}"
    assert row["active units"] == f"{metrics['test/active_units']:.0f} / {latent_dim}"


@pytest.fixture(scope="module")
def collapse_run(synthetic_root, tmp_path_factory):
    """(tmp dir, report) after ``--only posterior_collapse``: 4 jobs of 2 steps each."""
    tmp = tmp_path_factory.mktemp("reproduce")
    return tmp, reproduce(synthetic_root, tmp, "--only", "posterior_collapse")


def test_report_holds_each_jobs_metrics(collapse_run):
    tmp, report = collapse_run
    exp_dir = tmp / "logs" / "posterior_collapse"
    assert "## exercise_architecture" not in report and "## binarized_nll" not in report
    assert f"hydra.sweep.dir={exp_dir}" in report  # the exact train.py command
    assert "trainer.max_epochs=1" in report and "trainer.limit_train_batches=2" in report
    rows = section_rows(report, "posterior_collapse")
    assert [(r["job"], r["kl"]) for r in rows] == [
        ("0", "constant"), ("1", "linear_warmup"), ("2", "cyclical"), ("3", "free_bits"),
    ]  # fmt: skip
    for row in rows:
        metrics = json.loads((exp_dir / row["job"] / "metrics.json").read_text())
        check_row(row, metrics, latent_dim=128)
    assert "had not reached it" in report  # 2 steps of a 5000-step warm-up


def test_binarized_nll_experiment_composes():
    cfg = compose_train(["experiment=binarized_nll"])
    assert cfg.data.binarize == "dynamic" and cfg.model.likelihood == "bernoulli"
    assert cfg.callbacks.test_metrics.nll_k == 5000


@pytest.mark.slow
def test_runs_of_only_add_up(synthetic_root, collapse_run):
    """A later ``--only binarized_nll`` adds its section; the earlier one stays in the report."""
    tmp, _ = collapse_run
    report = reproduce(synthetic_root, tmp, "--only", "binarized_nll")
    assert report.index("## posterior_collapse") < report.index("## binarized_nll")
    (row,) = section_rows(report, "binarized_nll")
    metrics = json.loads((tmp / "logs" / "binarized_nll" / "0" / "metrics.json").read_text())
    check_row(row, metrics, latent_dim=32)
    assert row["NLL k"] == "5000" and "(!)" not in row["test NLL"]  # binary: normalized
    assert f"test NLL of {metrics['test/nll']:.2f} nats (k=5000" in report


def test_sections_of_experiments_not_run_are_kept(tmp_path):
    """--report-only with no logs of exercise_architecture keeps its earlier section."""
    out = tmp_path / "results.md"
    out.write_text("# old\n\n## exercise_architecture\n\nkept table\n\n## not_an_experiment\n\nx\n")
    result = run_script(
        "scripts/reproduce_results.py",
        ["--report-only", "--log-dir", str(tmp_path / "logs"), "--out", str(out)],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = out.read_text()
    assert "## exercise_architecture\n\nkept table\n" in report
    assert "not_an_experiment" not in report and "# old" not in report


def test_prior_comparison_experiment_composes():
    cfg = compose_train(["experiment=prior_comparison"])
    assert cfg.data.binarize == "dynamic" and cfg.callbacks.test_metrics.nll_k == 5000


def test_data_root_beside_the_clone_is_written_relative_to_it():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "reproduce", ROOT / "scripts/reproduce_results.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.near_root(ROOT.parent / "shared" / "data") == "../shared/data"
    assert script.near_root(ROOT / "data") == "data"
    assert script.near_root(Path("/")) == "/"
