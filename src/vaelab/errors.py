"""The error types of every layer; the entry points turn them into short messages
(``vaelab.runs.cli``)."""

from __future__ import annotations

import signal
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
