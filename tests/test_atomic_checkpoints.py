"""Checkpoint writes that a crash cannot leave half done, and resume past a broken file."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
import torch
from conftest import compose_train, run_script, synthetic_overrides
from hydra.utils import instantiate

from vaelab.errors import StorageError
from vaelab.lit.checkpoint_io import AtomicCheckpointIO


def test_a_failure_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def disk_full(fd):  # the bytes are in the temporary file; the disk is full at the flush
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageError) as err:
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert str(err.value).startswith(
        f"cannot write a checkpoint to {path}: no space left on the device (it needed 0.0"
    )
    assert "\n" not in str(err.value)
    assert io.load_checkpoint(path)["step"] == 1  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3


def test_the_trainer_writes_checkpoints_atomically_by_default(tmp_path):
    cfg = compose_train([], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.slow
def test_resume_skips_a_truncated_checkpoint_and_takes_the_next_newest(synthetic_root, tmp_path):
    tiny = ["model.hidden_dims=[32]", "model.latent_dim=4", "callbacks.figures=null"]
    first = run_script(
        "train.py", [*synthetic_overrides(synthetic_root, tmp_path), *tiny, "test=false"]
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a kill mid-write
    resumed = run_script(
        "train.py", [f"resume={run_dir}", "trainer.max_epochs=3", "data.checksums=null"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: {last} does not load (not a PyTorch checkpoint, or truncated" in (
        resumed.stdout + resumed.stderr
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["resumed_from"].endswith("epoch_001.ckpt")
    assert last.stat().st_size > 0 and torch.load(last, weights_only=True)["epoch"] == 2


def test_resume_with_no_loadable_checkpoint_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02 truncated")
    result = run_script("train.py", [f"resume={run_dir}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: resume={run_dir}: none of its 1 checkpoints loads (each reported above); "
        "start the run again"
    )


@pytest.fixture
def small_disk(tmp_path):
    """A real 12 MB file system (tmpfs) at ``tmp_path / "disk"``: mounted when the tests run
    as root, as CI does."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_line_and_loadable_checkpoints(
    synthetic_root, small_disk
):
    """Two 6.7 MB checkpoints (best and last) do not fit on 12 MB."""
    result = run_script(
        "train.py",
        [*synthetic_overrides(synthetic_root, small_disk), "callbacks.figures=null", "logger=[]"],
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device (it needed 6.7 MB, " in errors[0]
    (run_dir,) = (small_disk / "train" / "runs").iterdir()
    saved = list((run_dir / "checkpoints").iterdir())
    assert saved and all(p.suffix == ".ckpt" for p in saved)  # no temporary file left
    for path in saved:
        assert "state_dict" in torch.load(path, weights_only=True)
