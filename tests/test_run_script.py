"""The tests' ``run_script``: a run that hangs fails its test with the stacks of all its
processes, and leaves none of them running."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import run_script

RANK = "import time\\ndef rank_waits(): time.sleep(600)\\nrank_waits()"
HANGS = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "{RANK}"])
print("child", child.pid, flush=True)
def main_waits(): time.sleep(600)
main_waits()
"""


def test_a_hanging_run_fails_with_the_stacks_of_its_processes(tmp_path):
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    with pytest.raises(pytest.fail.Exception) as failure:
        run_script(str(script), [], timeout=3)
    message = str(failure.value)
    assert "still ran after 3 s" in message
    assert "main_waits" in message and "rank_waits" in message  # both processes' stacks
    child = int(message.split("child ", 1)[1].split()[0])
    deadline = time.monotonic() + 5  # its exit may lag its pipes' closing by a moment
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)  # nothing of the run is left


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
