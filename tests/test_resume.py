"""SIGINT/SIGTERM save the training state and print the command that resumes; resuming
continues the same run dir, TensorBoard dir and epoch count without repeating or skipping
anything."""

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import ROOT, run_script, synthetic_overrides

from vaelab.data.datamodule import MNISTDataModule
from vaelab.data.sampling import ShardedBatches
from vaelab.errors import VaelabError
from vaelab.lit.fault_tolerance import SaveOnInterrupt
from vaelab.lit.loggers import CSVLogger
from vaelab.lit.module import VAELitModule
from vaelab.runs.cli import quiet_known_warnings
from vaelab.runs.resume import resume_argv, resume_command

# ----- the command line of a resumed run -------------------------------------------------


def fake_run(tmp_path: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "runs" / "2025-01-01_00-00-00"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run_dir


def test_resume_reuses_the_runs_overrides_and_its_dir(tmp_path):
    run_dir = fake_run(tmp_path, ["model.latent_dim=2", "trainer.max_epochs=3", "logger=many"])
    argv = resume_argv(["train.py", f"resume={run_dir}", "trainer.max_epochs=5"])
    assert argv[:3] == ["train.py", "model.latent_dim=2", "logger=many"]  # max_epochs: given now
    assert argv[3:5] == [f"resume={run_dir}", "trainer.max_epochs=5"]
    assert argv[5] == f"hydra.run.dir={run_dir}"
    assert argv[6] == "hydra.output_subdir=.hydra/resume-001"  # .hydra/ itself is kept


def test_a_second_resume_starts_from_the_latest_record(tmp_path):
    run_dir = fake_run(tmp_path, ["model.latent_dim=2"])
    record = run_dir / ".hydra" / "resume-001"
    record.mkdir()
    (record / "overrides.yaml").write_text(
        yaml.safe_dump(["model.latent_dim=2", f"resume={run_dir}", "trainer.max_epochs=9"])
    )
    argv = resume_argv(["train.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    assert argv[1:3] == ["model.latent_dim=2", "trainer.max_epochs=9"]
    assert argv[-2:] == [f"hydra.run.dir={run_dir}", "hydra.output_subdir=.hydra/resume-002"]


def test_checkpoint_outside_a_run_dir_starts_a_new_run(tmp_path):
    path = tmp_path / "copied.ckpt"
    path.write_bytes(b"")
    assert resume_argv(["train.py", f"ckpt_path={path}"]) == ["train.py", f"ckpt_path={path}"]
    assert resume_argv(["train.py", "ckpt_path=null"]) == ["train.py", "ckpt_path=null"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resume=/no/such/run"], "resume=/no/such/run: no such run dir"),
        (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt: no such file"),
        (["-m", "resume={run}"], "resume= continues one run; drop -m/--multirun"),
    ],
)
def test_bad_resume_arguments(tmp_path, args, message):
    run_dir = fake_run(tmp_path, [])
    with pytest.raises(VaelabError, match=message):
        resume_argv(["train.py", *(a.format(run=run_dir) for a in args)])


def test_resume_command_is_quoted_for_shell_and_hydra():
    command = resume_command("/logs/my runs/x", script="train.py")
    assert shlex.split(command)[1:] == ["train.py", "resume='/logs/my runs/x'"]


# ----- an epoch interrupted part way --------------------------------------------------------


def test_sharded_batches_resume_skips_the_batches_already_trained():
    sampler = ShardedBatches(10, 3, shuffle=True, seed=3)
    sampler.set_epoch(1)
    expected = [b.tolist() for b in sampler]
    sampler.resume(2)
    assert [b.tolist() for b in sampler] == expected[2:]
    assert [b.tolist() for b in sampler] == expected  # one pass only


class Record(L.Callback):
    """The images and losses of every trained batch, by epoch."""

    def __init__(self):
        self.images, self.losses = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        x = batch[0]
        self.images.setdefault(trainer.current_epoch, []).extend(
            row.numpy().tobytes() for row in x.flatten(1)
        )
        self.losses.setdefault(trainer.current_epoch, []).append((float(outputs["loss"]), len(x)))


class CtrlCAt(L.Callback):
    def __init__(self, batch_idx):
        self.batch_idx = batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            raise KeyboardInterrupt


def fit(root, log_dir, callbacks, ckpt_path=None, eval_batch_size=1000):
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[SaveOnInterrupt(log_dir / "checkpoints"), *callbacks],
        logger=CSVLogger(log_dir, name="csv", version=""),
        enable_checkpointing=True,  # SaveOnInterrupt is a Checkpoint callback
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    datamodule = MNISTDataModule(
        root, val_size=100, batch_size=64, eval_batch_size=eval_batch_size, download=False
    )
    model = VAELitModule(hidden_dims=[32], latent_dim=4)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer, datamodule


def test_epoch_interrupted_part_way_trains_each_image_once(synthetic_root, tmp_path):
    before, after = Record(), Record()
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's answer to Ctrl-C
            fit(synthetic_root, tmp_path, [before, CtrlCAt(batch_idx=2)])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C
    saved = tmp_path / "checkpoints" / "interrupted.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()  # as train.py runs: Lightning's advice does not apply here
        trainer, datamodule = fit(synthetic_root, tmp_path, [after], ckpt_path=saved)
    assert not [w for w in caught if "not resumable" in str(w.message)]

    train_images = sorted(
        (row.float() / 255).numpy().tobytes() for row in datamodule.data_train.images.flatten(1)
    )
    assert len(before.images[0]) == 3 * 64
    assert sorted(before.images[0] + after.images[0]) == train_images  # each image once
    assert sorted(after.images[1]) == train_images
    assert trainer.global_step == 2 * 8 and not saved.exists()

    # the epoch's logged mean covers the batches of both processes
    batches = before.losses[0] + after.losses[0]
    expected = sum(loss * n for loss, n in batches) / sum(n for _, n in batches)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[0]["train/loss"]) == pytest.approx(expected, rel=1e-5)


class SigtermInValidation(L.Callback):
    """SIGTERM after the first of the validation batches of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            signal.raise_signal(signal.SIGTERM)


def test_a_signal_during_validation_stops_the_run_after_the_validation(synthetic_root, tmp_path):
    """Lightning stops validation after the batch in hand, and a run resumed from there skips
    the rest of it: the epoch's validation metrics (and checkpoints) would be lost."""
    with pytest.raises(BaseException):  # Lightning's SIGTERMException  # noqa: B017
        fit(synthetic_root, tmp_path, [SigtermInValidation(0)], eval_batch_size=25)
    saved = tmp_path / "checkpoints" / "interrupted.ckpt"
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows if r["val/loss"]] == [0]  # the 4 batches' mean
    assert [int(r["epoch"]) for r in rows if r["train/loss"]] == [0]  # stopped at the epoch's end
    steps = torch.load(saved, weights_only=True)["global_step"]
    trainer, _ = fit(synthetic_root, tmp_path, [], ckpt_path=saved, eval_batch_size=25)
    assert trainer.global_step == 2 * steps  # nothing repeated, nothing skipped
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows if r["val/loss"]] == [0, 1]
    handler = signal.getsignal(signal.SIGTERM)  # the deferral's handler is gone
    assert getattr(handler, "__name__", "") != "_defer_sigterm"


# ----- the command line, end to end -------------------------------------------------------


def start(args: list[str], output: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    env["PYTHONUNBUFFERED"] = "1"
    with open(output, "w") as out:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def signal_after_new_checkpoint(process, checkpoints: Path, since: float, sig) -> None:
    """Send ``sig`` as soon as last.ckpt (written every epoch) is newer than ``since``."""
    deadline = time.time() + 240
    last = checkpoints / "last.ckpt"
    while time.time() < deadline and process.poll() is None:
        if last.exists() and last.stat().st_mtime > since:
            process.send_signal(sig)
            break
        time.sleep(0.02)
    process.wait(timeout=240)


def resume_line(output: Path) -> list[str]:
    (line,) = [x for x in output.read_text().splitlines() if x.startswith("resume with: ")]
    return shlex.split(line.removeprefix("resume with: "))


@pytest.mark.slow
def test_sigterm_and_sigint_then_resume_continue_the_same_run(synthetic_root, tmp_path):
    args = synthetic_overrides(synthetic_root, tmp_path) + [
        "data.batch_size=16",  # 32 steps an epoch: long enough to be interrupted in
        "trainer.max_epochs=4",
        "model.hidden_dims=[32]",
        "callbacks.figures=null",
        "callbacks.progress_bar.refresh_rate=0",
        "logger=many",
    ]
    out = tmp_path / "out.txt"
    process = start([sys.executable, str(ROOT / "train.py"), *args], out)
    runs = tmp_path / "train" / "runs"
    while not runs.exists() or not any(runs.iterdir()):
        time.sleep(0.05)
    (run_dir,) = runs.iterdir()
    checkpoints = run_dir / "checkpoints"
    signal_after_new_checkpoint(process, checkpoints, 0.0, signal.SIGTERM)
    text = out.read_text()
    assert process.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert f"training interrupted by SIGTERM: checkpoint saved to {checkpoints}" in text
    command = resume_line(out)
    assert command[-1] == f"resume={run_dir}" and "Traceback" not in text

    # resume, exactly as printed, and interrupt again with Ctrl-C
    interrupted_at = (checkpoints / "interrupted.ckpt").stat().st_mtime
    process = start(command, out)
    signal_after_new_checkpoint(process, checkpoints, interrupted_at, signal.SIGINT)
    assert process.returncode == 128 + signal.SIGINT, out.read_text()[-3000:]
    assert "training interrupted by SIGINT: checkpoint saved to" in out.read_text()
    assert resume_line(out) == command

    # resume to the end
    process = start(command, out)
    process.wait(timeout=240)
    assert process.returncode == 0, out.read_text()[-3000:]

    assert sorted(p.name for p in runs.iterdir()) == [run_dir.name]  # no new run dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["resumed_from"] == str(
        checkpoints / "interrupted.ckpt"
    )
    assert not (checkpoints / "interrupted.ckpt").exists()
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 * 32  # 500 images in batches of 16: no step repeated
    history = last["callbacks"]["TrainingCurves"]["history"]  # saved before epoch 4 ended
    assert [row["epoch"] for row in history] == [1, 2, 3]
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows if r["train/loss"]] == [0, 1, 2, 3]
    assert [int(r["epoch"]) for r in rows if r["val/loss"]] == [0, 1, 2, 3]
    assert (run_dir / "tensorboard").is_dir() and len(
        list((run_dir / "tensorboard").glob("events.*"))
    ) >= 3
    assert not [p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()]  # one version
    records = sorted((run_dir / ".hydra").glob("resume-*/overrides.yaml"))
    assert [r.parent.name for r in records] == ["resume-001", "resume-002"]
    assert yaml.safe_load(records[1].read_text()) == [*args, f"resume={run_dir}"]
    original = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert original == args


def test_resuming_a_finished_run_says_so_and_changes_nothing(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = run_script("train.py", [f"resume={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert (
        f"resume={run_dir}: the run had finished (2 epochs; its metrics.json is kept), nothing "
        "to continue; to train it longer, raise trainer.max_epochs (it was 2)"
    ) in output
    # nothing changed, so nothing is said about the linear path it resolved (auto -> a bool)
    assert "Resuming with" not in output and "Restoring states" not in output
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    changed = [p for p in before if after[p] != before[p] and p.suffix != ".log"]
    assert not changed, changed  # (the run's log says it was resumed)
    new = [p.relative_to(run_dir) for p in after if p not in before]
    assert all(p.parts[:2] == (".hydra", "resume-001") or p.suffix == ".log" for p in new), new
