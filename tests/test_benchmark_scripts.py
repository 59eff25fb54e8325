"""The benchmark's scripts run: the reference script on its own, and the whole-process mode of
scripts/benchmark.py (timings are the scripts' business, not the tests')."""

from __future__ import annotations

import json

import pytest
from conftest import run_script


def test_reference_script_trains_tests_and_saves_images(synthetic_root, tmp_path):
    result = run_script(
        "scripts/reference_vae.py",
        ["--epochs", "2", "--data-root", str(synthetic_root), "--out", str(tmp_path)],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("====> Test set loss:") == 2
    for epoch in (1, 2):
        assert (tmp_path / f"reconstruction_{epoch}.png").stat().st_size > 0
        assert (tmp_path / f"sample_{epoch}.png").stat().st_size > 0


@pytest.mark.slow
def test_whole_process_mode_times_both_runs(synthetic_root, tmp_path):
    result = run_script(
        "scripts/benchmark.py",
        ["--whole", "--epochs", "1", "--data-root", str(synthetic_root)]
        + ["--json", str(tmp_path / "whole.json")]
        + ["data.checksums=null", "data.download=false", "data.val_size=100"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "whole.json").read_text())
    assert summary["mode"] == "whole process" and summary["epochs"] == 1
    assert summary["reference_seconds"] > 0 and summary["vaelab_seconds"] > 0
    assert summary["speedup"] == pytest.approx(
        summary["reference_seconds"] / summary["vaelab_seconds"]
    )
    assert "process start to exit" in result.stdout


@pytest.mark.slow
def test_the_plain_loop_and_vaelabs_default_run_compare(synthetic_root, tmp_path):
    result = run_script(
        "scripts/benchmark.py",
        ["--sides", "plain,vaelab_default", "--epochs", "1", "--val-size", "100"]
        + ["--data-root", str(synthetic_root), "--json", str(tmp_path / "bench.json")]
        + ["data.checksums=null", "data.download=false", "callbacks.figures=null"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "bench.json").read_text())
    assert summary["sides"] == ["plain", "vaelab_default"]
    (plain,) = summary["runs"]["plain"]
    assert plain["fit_samples_per_sec"] > 0 and plain["linear"] in ("oneDNN", "nn")
    assert 0 < plain["test_loss"] < 800  # 784 pixels: below a coin flip's ~543 after an epoch
    assert summary["vaelab_default_over_plain"] == pytest.approx(
        summary["vaelab_default_fit_samples_per_sec"] / summary["plain_fit_samples_per_sec"]
    )
    assert "fit samples/s" in result.stdout and "vaelab ratio" in result.stdout


def test_paired_epochs_time_the_plain_loop_inside_the_run(synthetic_root):
    result = run_script(
        "scripts/bench_step_path.py",
        ["--paired", "--ops", "--epochs", "2", "--data-root", str(synthetic_root)]
        + ["data.checksums=null", "data.download=false", "data.val_size=100"]
        # nn.Linear's path whatever the load: the auto probe may pick oneDNN's, whose linear
        # ops are not the aten::mm counted below
        + ["model.onednn_linear=false"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = result.stdout.split("ratio\n", 1)[1].splitlines()
    assert [r.split()[0] for r in rows[:2]] == ["0", "1"]  # one pair per epoch
    # vaelab's ms a step, the part inside training_step (no more than the whole), the plain's
    for row in rows[:2]:
        ours, in_step, plain = (float(v) for v in row.split()[1:4])
        assert 0 < in_step <= ours and plain > 0
    assert "vaelab at" in rows[2] and "x the plain loop's speed" in rows[2]
    assert "in training_step +" in rows[3]
    # the profiled pair: both sides' aten ops, the matmuls among them
    ops = result.stdout.split("aten ops per optimizer step", 1)[1]
    for side in ("vaelab", "plain"):
        line = next(r for r in ops.splitlines() if r.strip().startswith(f"{side}:"))
        assert float(line.split()[1]) > 100  # calls a step: forward, backward and Adam
    assert ops.count("aten::mm") >= 2
