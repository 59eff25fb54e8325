"""SIGKILL at random moments, during checkpoint writes too: every checkpoint left loads, and
``resume=<run_dir>`` after each kill ends with the epochs and steps of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, synthetic_overrides

TESTS = Path(__file__).resolve().parent
DELAY = 0.5  # seconds between a checkpoint's temporary file and its rename
EPOCHS = 6
STEPS_PER_EPOCH = 32  # 500 training images in batches of 16


def start(args: list[str], output: Path) -> subprocess.Popen:
    """``python train.py args`` with ``tests/`` importable (for SlowCheckpointIO), its output
    appended to ``output``."""
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    with open(output, "a") as out:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def writing_checkpoint(checkpoints: Path, pid: int | str = "*") -> bool:
    """Whether a temporary checkpoint file (of process ``pid``) is in ``checkpoints``."""
    return any(checkpoints.glob(f".*.ckpt.{pid}.tmp"))


def newer(checkpoints: Path, since: float) -> bool:
    """Whether a ``*.ckpt`` in ``checkpoints`` was written after ``since`` (a time)."""
    return any(p.stat().st_mtime > since for p in checkpoints.glob("*.ckpt"))


def newest_step(checkpoints: Path) -> int:
    """Load every ``*.ckpt`` (each must be whole); the global step of the newest."""
    steps = {}
    for path in checkpoints.glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert {"state_dict", "global_step", "epoch"} <= set(checkpoint), path
        steps[path.stat().st_mtime] = checkpoint["global_step"]
    return steps[max(steps)]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_ends_like_an_uninterrupted_run(
    synthetic_root, tmp_path
):
    rng = random.Random(15)
    run_dir, out = tmp_path / "run", tmp_path / "out.txt"
    checkpoints = run_dir / "checkpoints"
    args = [
        *synthetic_overrides(synthetic_root, tmp_path),
        "data.batch_size=16",
        f"trainer.max_epochs={EPOCHS}",
        "model.hidden_dims=[32]",
        "model.latent_dim=4",
        "callbacks.figures=null",
        "callbacks.progress_bar.refresh_rate=0",
        "test=false",
        # the default's background writer around a write slow enough to be killed in
        "trainer.plugins=[{_target_:vaelab.lit.checkpoint_io.BackgroundCheckpointIO,"
        f"checkpoint_io:{{_target_:slow_checkpoint_io.SlowCheckpointIO,delay:{DELAY}}}}}]",
        f"hydra.run.dir={run_dir}",
    ]
    command = args
    kills = []
    # in the middle of a checkpoint write (between its temporary file and the rename), once a
    # checkpoint exists (before, resume= has nothing to take); and at a random moment after
    # the process wrote its first checkpoint (in an epoch or in the next write)
    for moment in ("write", "random", "write", "random", "write", "random"):
        process, started = start(command, out), time.time()
        if moment == "write":
            pid = process.pid
            hit = wait_for(
                lambda pid=pid: writing_checkpoint(checkpoints, pid) and newer(checkpoints, 0),
                process,
            )
            time.sleep(rng.uniform(0, 0.8 * DELAY))
        else:
            hit = wait_for(lambda started=started: newer(checkpoints, started), process)
            time.sleep(rng.uniform(0, 2.0))
        process.kill()
        if process.wait(timeout=60) == 0:  # a fast machine: the run ended before this kill
            break
        assert hit and process.returncode == -signal.SIGKILL, out.read_text()[-3000:]
        kills.append((moment, writing_checkpoint(checkpoints), newest_step(checkpoints)))
        command = [f"resume={run_dir}"]
    assert len(kills) >= 3, kills
    if process.returncode != 0:
        process = start(command, out)
        assert process.wait(timeout=180) == 0, out.read_text()[-3000:]
    text = out.read_text()
    assert "Traceback" not in text
    assert [step for *_, step in kills] == sorted(step for *_, step in kills)
    assert any(left for _, left, _ in kills)  # a kill left a temporary file ...
    assert "a checkpoint write that was killed" in text  # ... that a resume removed
    assert not writing_checkpoint(checkpoints)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS and "resumed_from" in metrics
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == EPOCHS * STEPS_PER_EPOCH  # no step repeated or skipped
    assert last["epoch"] == EPOCHS - 1
    assert len(list((run_dir / ".hydra").glob("resume-*"))) >= 3  # one each resume that started
