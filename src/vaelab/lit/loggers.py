"""Lightning's loggers, adjusted: a CSV logger safe for resumed runs, and a TensorBoard logger
whose Scalars page opens on the losses and whose writes fail in one line on a full disk."""

from __future__ import annotations

import csv
import io
import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter as TorchSummaryWriter
from torch.utils.tensorboard.writer import FileWriter

from vaelab.errors import writing


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep an existing metrics.csv and continue its columns (Lightning deletes it)."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger``, except that a run resumed in its own dir
    appends to its ``metrics.csv`` instead of deleting the rows of the epochs before."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class EventFile:
    """An event file of TensorBoard, written in the calling thread: what tensorboard's
    ``EventFileWriter`` is to torch's ``FileWriter`` (``get_logdir``, ``add_event``, ``flush``,
    ``close``), except that each event is appended to the file as it is added.

    Tensorboard's writer hands events to a thread: a full disk, a read-only file system or a
    permission error there prints the thread's traceback, loses the events queued after it and
    reaches the training loop only at a later write, as a bare ``OSError`` (and again at every
    flush and close). Here it is a one-line ``StorageError`` (the file, the size of the event,
    the space free) at the write that failed; after it the file is closed and later calls do
    nothing, so Lightning's clean-up after the error does not raise it again."""

    _numbers = itertools.count()

    def __init__(self, logdir: str | Path, filename_suffix: str = "") -> None:
        self._logdir = str(logdir)
        # tensorboard's name: it reads files by the "tfevents" in it, in the order of the time
        self.path = Path(logdir) / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(self._numbers)}{filename_suffix}"
        )
        self._fd: int | None = None
        self._closed = False
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def get_logdir(self) -> str:
        return self._logdir

    def add_event(self, event: Event) -> None:
        """Append ``event`` (as a TFRecord: length, data, checksums) to the file."""
        if self._closed:
            return
        record = io.BytesIO()
        RecordWriter(record).write(event.SerializeToString())
        with writing(self.path, "TensorBoard events", record.tell()):
            try:
                if self._fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
                data = record.getbuffer()
                while data:  # os.write may write part of it before the disk is full
                    data = data[os.write(self._fd, data) :]
            except OSError:
                self.close()
                raise

    def flush(self) -> None:
        """Nothing to do: every event is written when it is added."""

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class _FileWriter(FileWriter):
    """torch's ``FileWriter`` over an ``EventFile``."""

    def __init__(self, log_dir: str | Path, filename_suffix: str = "") -> None:
        # not FileWriter.__init__: it would start tensorboard's writer thread
        self.event_writer = EventFile(log_dir, filename_suffix)


class SummaryWriter(TorchSummaryWriter):
    """``torch.utils.tensorboard.SummaryWriter`` whose events go to an ``EventFile`` (written in
    the calling thread: a storage fault is a one-line ``StorageError`` where it happens), as do
    the projector's files (``add_embedding``). Every TensorBoard file vaelab writes goes through
    it. ``max_queue`` and ``flush_secs`` have no effect (nothing is queued); ``add_scalars`` (a
    writer per scalar) is not supported. ``purge_step`` works as in torch's: the new file
    starts with a session start at that step, and TensorBoard drops the events of earlier
    files at that step and after (what a resumed run logs again)."""

    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:  # first use, or closed
            self.file_writer = _FileWriter(self.log_dir, self.filename_suffix)
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
            if self.purge_step is not None:  # as torch's FileWriter does, once
                start = SessionLog(status=SessionLog.START)
                self.file_writer.add_event(
                    Event(wall_time=time.time(), step=self.purge_step, session_log=start)
                )
                self.purge_step = None
        return self.file_writer

    def add_scalars(self, *args, **kwargs):
        raise NotImplementedError("vaelab's SummaryWriter writes no add_scalars; use add_scalar")

    def add_embedding(self, *args, **kwargs):
        with writing(self.log_dir, "the TensorBoard projector's files"):
            return super().add_embedding(*args, **kwargs)

    def embedding_job(self, *args, **kwargs) -> Callable[[], None]:
        """``add_embedding(*args, **kwargs)`` as a job for another thread (the projector's
        sprite and tensors take about 0.7 s for 2000 points on a 2-core CPU): torch's own
        ``add_embedding`` on a stand-in that has this writer's folder and projector config
        (the embeddings written before stay listed) but no events file, which the Trainer
        closes and reopens between stages."""
        folder = self.get_logdir()
        if not hasattr(self, "_projector_config"):
            self._projector_config = ProjectorConfig()
        stand_in = SimpleNamespace(
            _get_file_writer=lambda: SimpleNamespace(get_logdir=lambda: folder),
            _encode=self._encode,
            _projector_config=self._projector_config,
        )

        def job() -> None:
            with writing(self.log_dir, "the TensorBoard projector's files"):
                TorchSummaryWriter.add_embedding(stand_in, *args, **kwargs)

        return job


class TensorBoardLogger(LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` without the ``epoch`` scalar Lightning
    adds to every logged dict: a staircase chart that opened the Scalars page (the epochs are
    the x axis of every per-epoch chart already), and a custom-scalars layout (the CUSTOM
    SCALARS tab) with train and val of each ELBO term on one chart. It writes through vaelab's
    ``SummaryWriter``: a full disk, a read-only file system or a permission error ends the run
    with one ``StorageError`` line, from the write that failed."""

    LAYOUT = {
        "ELBO terms, train and val (nats per image)": {
            term: ["Multiline", [f"^train/{term}$", f"^val/{term}$"]]  # regexes, anchored
            for term in ("loss", "recon", "kl")
        }
    }

    def log_metrics(self, metrics, step=None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """Lightning's, with vaelab's ``SummaryWriter`` (Lightning's takes torch's)."""
        if self._experiment is None:
            assert rank_zero_only.rank == 0, "tried to init log dirs in non global_rank=0"
            with writing(self.log_dir, "TensorBoard events"):
                self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
            self._experiment.add_custom_scalars(self.LAYOUT)
        return self._experiment

    @rank_zero_only
    def save(self) -> None:
        """Lightning's (``hparams.yaml``, once), a storage fault a one-line ``StorageError``."""
        with writing(Path(self.log_dir) / self.NAME_HPARAMS_FILE, "the run's hyperparameters"):
            super().save()
