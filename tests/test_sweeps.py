"""Hydra plugins from the `sweep` extra: Optuna search, submitit launchers (local and SLURM)."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from conftest import run_script, synthetic_overrides

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs pip install -e .[sweep]")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs pip install -e .[sweep]")

# A small, fast model and one epoch per run: these tests are about the plumbing. (A value
# given on the command line would fix a parameter that the Optuna search should vary.)
TINY = ["trainer.max_epochs=1", "callbacks=none", "logger=[]", "model.hidden_dims=[32]"]


def quick_overrides(data_root: Path, log_dir: Path) -> list[str]:
    """The synthetic data set's overrides with TINY (whose callbacks=none drops the figures)."""
    base = [o for o in synthetic_overrides(data_root, log_dir) if not o.startswith("callbacks.")]
    return [*base, *TINY]


def only_sweep_dir(log_dir: Path) -> Path:
    (sweep_dir,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep_dir


def summary_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def job_metrics(sweep_dir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))
    }


@pytest.mark.slow
def test_optuna_search_with_ddp_trials(synthetic_root, tmp_path):
    """Three Optuna trials, each a 2-process DDP run: the extra rank of each trial must run
    that trial's sampled parameters in the trial's job dir (not a sweep of its own); a
    mismatch in latent_dim or hidden_width would make DDP fail on the parameter shapes."""
    result = run_script(
        "train.py",
        [
            *quick_overrides(synthetic_root, tmp_path),
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.params.hidden_width='choice(16, 32)'",  # quoted: no -m needed
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
        ],
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sweep_dir = only_sweep_dir(tmp_path)  # the extra ranks made no sweep dirs of their own
    metrics = job_metrics(sweep_dir)
    assert sorted(metrics) == ["0", "1", "2"]
    assert all((sweep_dir / job / "train_ddp_process_1.log").exists() for job in metrics)

    # Optuna minimised the float train.py returned: each trial's best val/loss.
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(m["val/loss"] for m in metrics.values()))
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.latent_dim",
        "model.beta",
        "hidden_width",
    }

    rows = summary_rows(sweep_dir)
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert all(r["status"] == "ok" for r in rows)
    searched = {"model.optimizer.lr", "model.beta", "model.latent_dim", "hidden_width"}
    assert searched & set(rows[0])  # the summary has columns for the sampled parameters
    for row in rows:  # ... read from each trial's job dir
        overrides = yaml.safe_load((sweep_dir / row["job"] / ".hydra/overrides.yaml").read_text())
        assert all(f"{p}={row[p]}" in overrides for p in searched & set(row))
        assert float(row["val/loss"]) == pytest.approx(metrics[row["job"]]["val/loss"])


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_multirun(synthetic_root, tmp_path):
    result = run_script(
        "train.py",
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            *quick_overrides(synthetic_root, tmp_path),
            "model.beta=0.5,2.0",
        ],
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sweep_dir = only_sweep_dir(tmp_path)
    assert any((sweep_dir / ".submitit").iterdir())  # the jobs went through submitit
    rows = summary_rows(sweep_dir)
    assert [(r["job"], r["model.beta"], r["status"]) for r in rows] == [
        ("0", "0.5", "ok"),
        ("1", "2.0", "ok"),
    ]
    metrics = job_metrics(sweep_dir)
    assert [float(r["test/loss"]) for r in rows] == pytest.approx(
        [metrics[job]["test/loss"] for job in ("0", "1")]
    )


def fake_slurm(bin_dir: Path) -> None:
    """`srun` and `sbatch` stand-ins: sbatch keeps the job script and refuses to submit."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 1\n",
        "sbatch": '#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "sbatch: error: no cluster" >&2\n'
        "exit 1\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_preset_asks_for_the_trainers_nodes_and_devices(tmp_path):
    """What `hydra/launcher=slurm` would submit for 2 nodes x 4 GPUs: the sbatch script that
    submitit writes, caught by a stand-in sbatch (no cluster here)."""
    fake_slurm(tmp_path / "bin")
    captured = tmp_path / "job.sbatch"
    result = run_script(
        "train.py",
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
            "trainer=ddp",
            "trainer.accelerator=gpu",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            f"paths.log_dir={tmp_path / 'logs'}",
            "model.beta=0.5,1.0",
        ],
        env={
            "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "SBATCH_CAPTURE": str(captured),
        },
    )
    assert result.returncode != 0 and "no cluster" in result.stderr  # refused, as arranged
    sbatch = captured.read_text()
    for option in (
        "--partition=gpu",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--time=90",
        "--array=0-1",  # one array task per run of the sweep
    ):
        assert f"#SBATCH {option}" in sbatch, sbatch
    assert "srun" in sbatch and "submitit.core._submit" in sbatch
