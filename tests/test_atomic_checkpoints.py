"""Checkpoint writes that a crash cannot leave half done, resume past a broken file, and a full
disk, a read-only file system or no permission as one error line (checkpoints, TensorBoard)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading

import pytest
import torch
from conftest import compose_train, run_script, synthetic_overrides
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from vaelab.errors import StorageError
from vaelab.lit.checkpoint_io import (
    AtomicCheckpointIO,
    BackgroundCheckpointIO,
    remove_stale_temporaries,
)
from vaelab.lit.loggers import SummaryWriter


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
        f"cannot write a checkpoint to {path}: no space left on the device (it needed 5.5 kB, "
    )
    assert "\n" not in str(err.value)
    assert io.load_checkpoint(path)["step"] == 1  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3


def test_resuming_removes_the_temporary_files_of_killed_writers_only(tmp_path):
    dead = subprocess.Popen(["true"])  # a process that is gone
    dead.wait()
    killed = tmp_path / f".last.ckpt.{dead.pid}.tmp"
    alive = tmp_path / f".last.ckpt.{os.getpid()}.tmp"  # a write in progress
    other = tmp_path / ".notes.tmp"
    for path in (killed, alive, other):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [killed]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])


def test_the_trainer_writes_checkpoints_atomically_by_default(tmp_path):
    cfg = compose_train([], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, BackgroundCheckpointIO)
    assert isinstance(io.checkpoint_io, AtomicCheckpointIO)


class GatedCheckpointIO(AtomicCheckpointIO):
    """Writes only once ``gate`` is set: a disk that is slow until the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        assert self.gate.wait(30)
        super().save_checkpoint(checkpoint, path, storage_options)


def test_background_writes_copy_the_state_and_remove_only_after_the_write(tmp_path):
    inner = GatedCheckpointIO()
    io = BackgroundCheckpointIO(inner)
    old, new = tmp_path / "epoch_000.ckpt", tmp_path / "epoch_001.ckpt"
    old.write_bytes(b"the best checkpoint so far")
    weights = torch.ones(4)
    io.save_checkpoint({"w": weights}, new)  # returns at once: the gate is closed
    weights.zero_()  # training goes on: the checkpoint holds the weights as they were
    io.remove_checkpoint(old)  # ModelCheckpoint dropping the worse one
    assert old.exists() and not new.exists()  # queued behind the write
    inner.gate.set()
    io.teardown()  # the Trainer's wait at the end of a stage
    assert not old.exists()
    assert torch.equal(torch.load(new, weights_only=True)["w"], torch.ones(4))


def test_a_background_write_that_fails_raises_its_one_line_at_the_wait(tmp_path, monkeypatch):
    io, path = BackgroundCheckpointIO(), tmp_path / "last.ckpt"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    io.save_checkpoint({"w": torch.zeros(1000)}, path)  # never raises its own write's error
    with pytest.raises(StorageError, match="no space left on the device"):
        io.teardown()
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_background_write_that_failed_raises_at_the_next_checkpoint(tmp_path, monkeypatch):
    io = BackgroundCheckpointIO()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    io.save_checkpoint({"w": torch.zeros(10)}, tmp_path / "a.ckpt")
    io._executor.submit(lambda: None).result()  # the worker is past the failed write
    with pytest.raises(StorageError, match="no space left on the device"):
        io.save_checkpoint({"w": torch.zeros(10)}, tmp_path / "b.ckpt")
    monkeypatch.undo()
    with pytest.raises(StorageError):  # the failure is not forgotten at the wait either
        io.teardown()


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
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, options)``: a real file system (tmpfs, e.g. ``size=12m`` or
    ``ro,size=4k``) at ``tmp_path / name``, unmounted after the test; mounted when the tests
    run as root, as CI does."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(name: str, options: str):
        disk = tmp_path / name
        disk.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def small_disk(mount_tmpfs):
    """A real 12 MB file system (tmpfs) at ``tmp_path / "disk"``."""
    return mount_tmpfs("disk", "size=12m")


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


def scalars_in(folder) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files of ``folder``, read by
    TensorBoard's own loader."""
    return [
        (value.tag, event.step, float(torch.tensor(list(value.tensor.float_val))[0]))
        if value.HasField("tensor")
        else (value.tag, event.step, value.simple_value)
        for path in sorted(folder.glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    ]


def test_events_are_written_in_the_calling_thread_and_tensorboard_reads_them(tmp_path):
    threads = threading.active_count()
    with SummaryWriter(str(tmp_path)) as writer:
        assert threading.active_count() == threads  # no writer thread (tensorboard starts one)
        for step in range(3):
            writer.add_scalar("train/loss", 10.0 - step, step)
    assert scalars_in(tmp_path) == [("train/loss", s, 10.0 - s) for s in range(3)]


def test_a_full_disk_under_tensorboard_is_one_error_at_the_write(mount_tmpfs):
    disk = mount_tmpfs("events", "size=4k")
    writer = SummaryWriter(str(disk))
    with pytest.raises(StorageError) as err:
        for step in range(1000):  # about 40 bytes each: the 4 kB are full after ~100
            writer.add_scalar("train/loss", float(step), step)
    (events,) = disk.glob("events.out.tfevents.*")
    assert str(err.value).startswith(
        f"cannot write TensorBoard events to {events}: no space left on the device (it needed "
    )
    assert "\n" not in str(err.value)
    writer.add_scalar("train/loss", 0.0, 2000)  # later writes and the close do nothing
    writer.close()
    written = scalars_in(disk)  # every scalar up to the failed one, in order
    assert 50 < len(written) < 1000 and [s for _, s, _ in written] == list(range(len(written)))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "fault"), [("size=12k", "no space left"), ("ro,size=4k", "read-only")]
)
def test_tensorboard_on_a_full_or_read_only_disk_ends_the_run_with_one_line(
    synthetic_root, tmp_path, mount_tmpfs, options, fault
):
    """The events of a run need ~20 kB: 12 kB fill during the run, a read-only disk fails at
    the first event; the checkpoints (on another disk) stay loadable."""
    disk = mount_tmpfs("events", options)
    result = run_script(
        "train.py",
        [
            *synthetic_overrides(synthetic_root, tmp_path),
            "callbacks.figures=null",
            "model.hidden_dims=[32]",
            f"logger.tensorboard.save_dir={disk}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot write TensorBoard events to {disk}/events.out.")
    assert f": {fault}" in errors[0] and " bytes, " in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()
    for path in (tmp_path / "run" / "checkpoints").glob("*"):
        assert "state_dict" in torch.load(path, weights_only=True)
