"""Where a run keeps its checkpoints: plain paths, no torch, so that the command line's
checks (``train.py --help``, ``resume=``) start without importing the training stack."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = "checkpoints"


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run dir that holds ``checkpoint`` in its ``checkpoints/`` folder, else None."""
    path = Path(checkpoint).expanduser().resolve()
    run_dir = path.parent.parent
    if path.parent.name == CHECKPOINT_DIR and (run_dir / ".hydra").is_dir():
        return run_dir
    return None
