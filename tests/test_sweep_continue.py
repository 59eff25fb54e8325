"""A sweep run again in its sweep dir (after a kill, or resubmitted after a preemption) skips
the jobs that finished, resumes the one that stopped and runs the rest."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import ROOT, run_script, synthetic_overrides
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from vaelab.errors import VaelabError
from vaelab.runs.resume import resume_argv
from vaelab.runs.train import train


def fake_sweep(sweep_dir, task, hydra=()):
    """A sweep dir with the ``multirun.yaml`` Hydra writes (only its overrides)."""
    sweep_dir.mkdir(parents=True)
    hydra = [f"hydra.sweep.dir={sweep_dir}", "hydra.mode=MULTIRUN", *hydra]
    record = {"hydra": {"overrides": {"hydra": hydra, "task": task}}}
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(record))
    return sweep_dir


def test_resume_of_a_sweep_dir_is_the_sweeps_command_in_its_dir(tmp_path):
    task = ["model.latent_dim=2,8", "trainer.max_epochs=3"]
    sweep = fake_sweep(tmp_path / "sweep", task, ["hydra/launcher=slurm"])
    argv = resume_argv(["train.py", f"resume={sweep}", "hydra.launcher.partition=gpu"])
    assert argv == [
        "train.py",
        "-m",
        *task,
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={sweep}",
    ]


def test_a_sweep_dir_with_other_arguments_is_refused(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep", ["model.latent_dim=2,8"])
    same = ["train.py", "-m", "model.latent_dim=2,8", f"hydra.sweep.dir={sweep}"]
    assert resume_argv(same) == same
    with pytest.raises(VaelabError, match="holds a sweep of other arguments") as err:
        resume_argv(["train.py", "-m", "model.latent_dim=2,8,32", f"hydra.sweep.dir={sweep}"])
    assert "(it ran with: model.latent_dim=2,8; now: model.latent_dim=2,8,32)" in str(err.value)
    with pytest.raises(VaelabError, match="holds a sweep of other arguments"):
        resume_argv(["train.py", f"resume={sweep}", "model.beta=4"])


def test_a_finished_job_returns_its_earlier_metrics_without_training(tmp_path):
    """What a sweeper (Optuna) gets from a skipped job: its val/loss, as train.py returns."""
    job_dir = tmp_path / "sweep" / "0"
    job_dir.mkdir(parents=True)
    (job_dir / "metrics.json").write_text(json.dumps({"val/loss": 123.5, "epochs": 3}))
    from conftest import CONFIG_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra.mode=MULTIRUN"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(job_dir)
        cfg.paths.data_dir = str(tmp_path / "no data here")  # nothing is built
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    try:
        assert train(cfg) == {"val/loss": 123.5, "epochs": 3}
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
def test_a_killed_sweep_run_again_skips_resumes_and_runs_its_jobs(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *synthetic_overrides(synthetic_root, tmp_path),
        "data.batch_size=16",  # 32 steps an epoch
        "trainer.max_epochs=3",
        "model.hidden_dims=[32]",
        "callbacks.figures=null",
        "callbacks.progress_bar.refresh_rate=0",
        "test=false",
        "model.latent_dim=2,3,4",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    with open(tmp_path / "first.txt", "w") as out:
        first = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (sweep / "1" / "checkpoints" / "last.ckpt").exists():
        assert first.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)  # job 1 in its second epoch
    first.wait(timeout=60)
    assert (sweep / "0" / "metrics.json").is_file()
    assert not (sweep / "1" / "metrics.json").exists() and not (sweep / "2").exists()
    job0 = {p: p.stat().st_mtime_ns for p in (sweep / "0").rglob("*") if p.is_file()}
    assert any(p.name == "metrics.json" for p in job0) and any(p.suffix == ".ckpt" for p in job0)

    again = run_script("train.py", args)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert f"Job 0 ({sweep / '0'}) finished before: skipped" in output
    assert f"Job 1 ({sweep / '1'}) stopped before it finished: resuming" in output
    assert f"Continuing from {sweep / '1' / 'checkpoints'}" in output
    assert "Job 2" not in output  # a new job: nothing to say
    # job 0 was not trained again: none of its files was rewritten, .hydra/ and log included
    assert {p: p.stat().st_mtime_ns for p in (sweep / "0").rglob("*") if p.is_file()} == job0
    # job 1 keeps the record of its first attempt, as a resumed single run does
    assert [p.name for p in (sweep / "1" / ".hydra").glob("resume-*")] == ["resume-001"]
    resumed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert resumed["resumed_from"].startswith(str(sweep / "1" / "checkpoints"))
    assert resumed["epochs"] == 3
    last = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 * 32  # the epochs before the kill were not trained again
    assert "resumed_from" not in json.loads((sweep / "2" / "metrics.json").read_text())
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["model.latent_dim"], r["status"]) for r in rows] == [
        ("0", "2", "ok"),
        ("1", "3", "ok"),
        ("2", "4", "ok"),
    ]
    assert [r["resumed"] for r in rows] == ["", "yes", ""]


@pytest.mark.slow
def test_a_sweep_resubmitted_through_submitit_skips_its_finished_jobs(synthetic_root, tmp_path):
    """The continuation is in the job: a launcher that starts the jobs elsewhere (submitit,
    as for SLURM) continues the sweep the same way."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs .[sweep]")
    sweep = tmp_path / "sweep"
    quick = [o for o in synthetic_overrides(synthetic_root, tmp_path) if "callbacks." not in o]
    args = [*quick, "trainer.max_epochs=1", "callbacks=none", "logger=[]", "test=false"]
    first = run_script("train.py", ["-m", *args, "model.beta=0.5,2", f"hydra.sweep.dir={sweep}"])
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in ("0", "1")}
    logs = {job: (sweep / job / "train.log").stat().st_mtime_ns for job in ("0", "1")}

    again = run_script(
        "train.py",
        [f"resume={sweep}", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert any((sweep / ".submitit").iterdir())  # the jobs went through submitit
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").stat().st_mtime_ns == metrics[job]
        assert (sweep / job / "train.log").stat().st_mtime_ns == logs[job]  # not appended to
    with open(sweep / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]
