"""A test helper for runs started by tests: checkpoint writes that take long enough to be
killed in the middle. Used by override, with ``tests/`` on PYTHONPATH:
``trainer.plugins=[{_target_:slow_checkpoint_io.SlowCheckpointIO,delay:0.5}]``."""

from __future__ import annotations

import time
from pathlib import Path

from vaelab.lit.checkpoint_io import AtomicCheckpointIO


class SlowCheckpointIO(AtomicCheckpointIO):
    """``AtomicCheckpointIO`` that waits ``delay`` seconds between writing the temporary file
    and renaming it over the checkpoint: a kill in that time leaves the whole temporary file
    and the old checkpoint."""

    def __init__(self, delay: float = 0.5) -> None:
        super().__init__()
        self.delay = delay

    def _replace(self, temporary: Path, path: Path) -> None:
        time.sleep(self.delay)
        super()._replace(temporary, path)
