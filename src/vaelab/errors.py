"""The error types of every layer; the entry points turn them into short messages
(``vaelab.runs.cli``)."""

from __future__ import annotations

import errno
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path


class VaelabError(ValueError):
    """Bad input (config value, data file, checkpoint): the message says what and how to fix it."""


class NonFiniteLossError(VaelabError):
    """Training produced a NaN or infinite loss; the message names where and the last good
    checkpoint."""


class TrainingInterrupted(Exception):
    """Fit or test stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption).

    ``checkpoint`` is the file saved at the interruption (None when nothing could be saved);
    ``run_dir`` is the run to resume with ``python train.py resume=<run_dir>``.
    """

    def __init__(self, signal_name: str, checkpoint: Path | None, run_dir: Path) -> None:
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.run_dir = Path(run_dir)
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"training interrupted by {signal_name}: {saved}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by that signal."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


class DistributedRunError(RuntimeError):
    """A DDP run that cannot go on: an extra rank exited, or the processes did not meet within
    the rendezvous timeout. The message is one line: which rank, its exit status and the end of
    its log. Not a ``VaelabError``: the run dir, with the rank's log, is kept."""


class StorageError(VaelabError):
    """A file could not be written (a full disk, a read-only file system, no permission); the
    message names the file, what was being written and the space it needed."""


STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


@contextmanager
def writing(path: str | Path, what: str, size: int | None = None):
    """Around a write of ``what`` to ``path`` (``size`` bytes, when known): a storage fault
    (``STORAGE_ERRNOS``) becomes a one-line ``StorageError``; other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(err, path, what, size) from None


def storage_error(err: OSError, path: str | Path, what: str, size: int | None = None):
    """``err``, a storage fault, as a one-line ``StorageError``: which file, what was being
    written, the space it needed and what is free."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    needed = f"it needed {_size(size)}, " if size is not None else ""
    return StorageError(
        f"cannot write {what} to {path}: {STORAGE_ERRNOS[err.errno]} ({needed}"
        f"{_size(free)} free there); free space or write elsewhere (paths.log_dir=...)"
    )


def _size(size: int) -> str:
    """A file size for a message: ``79.7 GB``, ``6.7 MB``, ``1.2 kB`` or ``80 bytes``."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    if size >= 1e6:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size} bytes"
