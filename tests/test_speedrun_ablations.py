"""scripts/speedrun_ablations.py: each line is the speedrun's command with one change, for the
same time budget, and the table says what removing each ingredient costs."""

from __future__ import annotations

import json

import pytest
from conftest import run_script

SMALL = [
    "data.checksums=null", "data.download=false", "data.val_size=100", "data.batch_size=64",
    "model.hidden_dims=[16]", "model.latent_dim=4", "logger=[]",
]  # fmt: skip


@pytest.mark.slow
def test_lines_share_the_budget_and_the_table_gives_each_ones_cost(synthetic_root, tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# results\n")
    args = ["--data-root", str(synthetic_root), "--budget-minutes", "0.1", "--nll-k", "4"]
    args += ["--nll-images", "50", "--log-dir", str(tmp_path / "ablations"), "--out", str(out)]
    args += ["--only", "recipe", "no_cosine"]
    args += [a for o in SMALL for a in ("--override", o)]
    result = run_script("scripts/speedrun_ablations.py", args, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("recipe", "no_cosine"):
        info = json.loads((tmp_path / "ablations" / name / "ablation.json").read_text())
        metrics = json.loads((tmp_path / "ablations" / name / "metrics.json").read_text())
        assert "experiment=speedrun" in info["command"]
        assert "trainer.max_time=00:00:00:06" in info["command"]
        assert metrics["fit_seconds"] < 6 + 5  # the budget (and its last batch)
        assert metrics["epochs"] >= 2  # sized to it: at least the two it measures
    assert "lr_schedule=constant" in info["command"]
    text = out.read_text()
    assert text.startswith("# results\n") and "## speedrun ablations" in text
    recipe_row = next(r for r in text.splitlines() if r.startswith("| `recipe`"))
    cosine_row = next(r for r in text.splitlines() if r.startswith("| `no_cosine`"))
    nll = [float(r.split(" | ")[2].split()[0]) for r in (recipe_row, cosine_row)]
    assert cosine_row.split(" | ")[3] == f"{nll[1] - nll[0]:+.2f}"  # Δ: the line minus the recipe
    assert "(k=4, 50 images)" in recipe_row
    assert "| `no_iwae` | the ELBO" in text and "not run yet" in text  # a line not run
    # a second report replaces the table between its markers
    again = run_script("scripts/speedrun_ablations.py", ["--report-only", "--log-dir",
                       str(tmp_path / "ablations"), "--out", str(out)])  # fmt: skip
    assert again.returncode == 0 and out.read_text().count("## speedrun ablations") == 1
