"""Checkpoint files that are never half written."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from vaelab.errors import writing

log = logging.getLogger(__name__)

# ".last.ckpt.1234.tmp": a checkpoint being written by process 1234
_TEMPORARY = re.compile(r"\.(?P<name>.+\.ckpt)\.(?P<pid>\d+)\.tmp")


def temporary_path(path: Path) -> Path:
    """Where ``AtomicCheckpointIO`` writes ``path`` before renaming it (hidden, not ``*.ckpt``,
    with the writer's process id)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` that a killed writer left (its process is
    gone; the checkpoints it was replacing are whole), say so in one line each, return them."""
    removed = []
    for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or _is_running(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        log.info("Removed %s (a checkpoint write that was killed; %s is whole)", path.name,
                 match["name"])  # fmt: skip
        removed.append(path)
    return removed


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, with every save atomic: the checkpoint is written to a
    temporary file in the same folder, flushed and fsynced, then renamed over the old one with
    ``os.replace`` (and the folder fsynced). A crash, a kill or a power loss at any instant
    leaves either the old file or the new one, never a partial one; a failed write removes its
    temporary file and leaves the old checkpoint as it was (a full disk, a read-only file system
    or a permission error: a one-line ``StorageError`` with the space the file needed).

    Lightning's own writes the bytes straight into the destination, which it truncates first.
    Configured in ``configs/trainer/default.yaml`` (``plugins``)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got "
                f"{storage_options!r}"
            )
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first: the size is known before writing
        temporary = temporary_path(path)
        with writing(path, "a checkpoint", buffer.tell()):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(temporary, "wb") as file:
                    file.write(buffer.getbuffer())
                    file.flush()
                    os.fsync(file.fileno())
                self._replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)  # before the free space is measured
                raise
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power loss
        finally:
            os.close(folder)

    def _replace(self, temporary: Path, path: Path) -> None:
        """The instant the whole new file takes the old one's place (a seam for tests that
        kill a run while it writes a checkpoint)."""
        os.replace(temporary, path)


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Lightning's ``AsyncCheckpointIO`` around ``AtomicCheckpointIO``: each checkpoint is
    copied (its tensors cloned) in the training thread and written, atomically and fsynced,
    by one worker thread while training goes on, so an epoch does not wait for the disk
    (about 0.07 s an epoch on a 2-core CPU, docs/speed.md). Removals (``ModelCheckpoint``
    dropping a worse checkpoint) wait in the same queue, after the writes handed over
    before them: a best checkpoint is removed only once its successor is on disk.

    The Trainer waits for the queue at the end of each stage (``teardown``), on an
    interruption too; a write that failed raises its error (a full disk: the one-line
    ``StorageError``) at the next checkpoint or at that wait. A kill -9 loses what it loses
    with synchronous writes: the checkpoint being written, never an older one."""

    def __init__(self, checkpoint_io: TorchCheckpointIO | None = None) -> None:
        super().__init__(checkpoint_io if checkpoint_io is not None else AtomicCheckpointIO())

    def save_checkpoint(self, checkpoint, *args, **kwargs) -> None:
        """Hands a copy of ``checkpoint`` to the worker. An earlier write's failure is raised
        here, before the hand-over: Lightning's own check comes after it, where it races with
        this write (its failure raised now or at the wait, by the worker's speed)."""
        self._ensure_setup()
        if self._error:
            raise self._error
        copy = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
        self._executor.submit(
            self._in_worker, self.checkpoint_io.save_checkpoint, copy, *args, **kwargs
        )

    def _in_worker(self, job, *args, **kwargs) -> None:
        """A write or a removal, in the worker: its error is kept for the next save or teardown."""
        try:
            job(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - raised at the next save or teardown
            self._error = err

    def remove_checkpoint(self, path) -> None:
        self._ensure_setup()
        self._executor.submit(self._in_worker, self.checkpoint_io.remove_checkpoint, path)
