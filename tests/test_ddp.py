"""DDP: two CPU processes (gloo) against one process with the same global batch, and the
command that starts the extra ranks of a multirun job."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIG_DIR, ROOT, compose_train, run_script, synthetic_overrides
from hydra import compose, initialize_config_dir
from hydra.conf import ConfigSourceInfo
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from vaelab.data import MNISTDataModule
from vaelab.lit.module import VAELitModule
from vaelab.runs import distributed
from vaelab.runs.train import train
from vaelab.science.bounds import kl_divergence

# Two epochs of 500 training images: 8 optimizer steps at a global batch of 128.
EPOCHS = ["trainer.max_epochs=2"]


def only_run_dir(log_dir: Path) -> Path:
    (run_dir,) = (log_dir / "train" / "runs").iterdir()  # one dir, not one per rank
    return run_dir


def exact_test_kl(checkpoint: str, data_root: Path) -> float:
    """KL term (nats per image) of the checkpoint on the whole test split, in this process.
    Unlike the reconstruction term it draws no z, so it is a deterministic function of the
    weights: the DDP run's test/kl must equal it up to float summation order."""
    model = VAELitModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dm = MNISTDataModule(data_root, val_size=100, download=False)
    dm.setup()
    x, _ = dm.data_test[torch.arange(len(dm.data_test))]
    with torch.no_grad():
        mu, logvar = model.net.encode(x)
    return float(kl_divergence(mu, logvar).mean())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(synthetic_root, tmp_path):
    ddp_logs = tmp_path / "ddp"
    result = run_script(
        "train.py",
        [
            *synthetic_overrides(synthetic_root, ddp_logs),
            *EPOCHS,
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "data.batch_size=64",  # per process: global batch 128
            "callbacks.progress_bar.refresh_rate=0",
        ],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Starting with 2 processes" in output

    run_dir = only_run_dir(ddp_logs)
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran in rank 0's dir
    assert output.count("Metrics written to") == 1  # rank 0 alone writes metrics.json
    ddp = json.loads((run_dir / "metrics.json").read_text())
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch_001.ckpt", "last.ckpt"]  # the best and the last, once
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"reconstructions.png", "samples.png", "latent_space.png"} <= figures

    # Test means are reduced over both ranks' shards with nothing counted twice: exact.
    exact = exact_test_kl(ddp["best_checkpoint"], synthetic_root)
    assert ddp["test/kl"] == pytest.approx(exact, rel=1e-5)

    # The same run in one process with the same global batch (128), in this process.
    cfg = compose_train(
        [*synthetic_overrides(synthetic_root, tmp_path / "single"), *EPOCHS, "data.batch_size=128"],
        output_dir=tmp_path / "single",
    )
    single = train(cfg)
    # Same initial weights (same seed; DDP broadcasts rank 0's) and the same 8 global batches
    # (ShardedBatches), so the runs differ only in the z noise (other random streams on each
    # rank) and float summation order: not bitwise equal. Measured here: 0.3 % apart, while
    # seeds 1-3 of the single run spread over 0.9 %, and a wrong global batch of 64 (16 steps)
    # ends 8 % lower. 2 % allows the noise and still catches a wrong step count.
    assert ddp["test/loss"] == pytest.approx(single["test/loss"], rel=0.02)
    assert ddp["epochs"] == single["epochs"] == 2


def test_extra_ranks_of_a_multirun_job_run_that_job_alone(monkeypatch, tmp_path):
    """The command Lightning gets for rank 1 of a multirun job: this job's overrides, its
    output dir, run mode; not the command line of the whole sweep."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model.beta=2", "trainer=ddp"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "multiruns" / "t" / "3")
        extra = ConfigSourceInfo(str(tmp_path / "more_configs"), "file", "command-line")
        cfg.hydra.runtime.config_sources.append(extra)  # as from --config-dir
    saved = HydraConfig.instance().cfg
    monkeypatch.setattr(distributed, "_launched_ranks", False)
    # as in `python train.py -m model.beta=1,2 trainer=ddp`, started from the repository root
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "model.beta=1,2", "trainer=ddp"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    try:
        HydraConfig.instance().set_config(cfg)
        command, cwd = distributed.rank_command(1)
    finally:
        HydraConfig.instance().cfg = saved
    assert command[:2] == [sys.executable, str(Path(cwd, "train.py").resolve())]
    assert command[2:] == [
        "--config-name=train",
        f"--config-dir={tmp_path / 'more_configs'}",
        "model.beta=2",
        "trainer=ddp",
        "hydra.mode=RUN",
        f'hydra.run.dir="{tmp_path / "multiruns" / "t" / "3"}"',
        "hydra.job.name=train_ddp_process_1",
        "hydra.output_subdir=null",
    ]
    assert distributed._launched_ranks  # the next job of the sweep cleans up after this one


def test_a_multirun_job_ends_once_its_extra_ranks_have_exited(monkeypatch, caplog):
    """The next job of a sweep starts its ranks only after this job's have exited; a rank
    that does not exit delays the sweep by the timeout only, with a warning."""
    monkeypatch.setattr(distributed, "_launched_ranks", True)  # this job started ranks
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    distributed.wait_for_extra_ranks(with_ranks([rank]))
    assert rank.poll() == 0

    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with caplog.at_level(logging.WARNING, logger=distributed.__name__):
            distributed.wait_for_extra_ranks(with_ranks([stuck]), timeout=0.5)
        assert stuck.poll() is None
        assert f"rank process {stuck.pid} of this job still runs" in caplog.text
    finally:
        stuck.kill()
        stuck.wait()


def with_ranks(procs: list[subprocess.Popen]) -> SimpleNamespace:
    """What ``wait_for_extra_ranks`` reads of a Trainer: the processes its launcher started."""
    return SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=procs)))


class Run:
    """``python train.py args`` in its own process group, its output read as it comes, so a
    test can act on what it prints (and on its DDP ranks) while it runs."""

    def __init__(self, args: list[str]):
        env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
        env.update(PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []  # (time.monotonic(), line)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, condition, what: str, timeout: float = 120.0) -> float:
        """Poll ``condition()`` until true; returns the time it became true."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"ended before {what}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.output[-3000:]}"
            time.sleep(0.05)
        return time.monotonic()

    def extra_rank(self) -> int | None:
        """The pid of the DDP rank this run's process started (its one child that is a rank),
        if it has started one."""
        for pid in children(self.process.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(b"train_ddp_process_1" in part for part in cmdline):
                return pid
        return None

    def finish(self, timeout: float = 240.0) -> int:
        """The exit status, once the run ended (at most ``timeout`` s); nothing of its process
        group is left running."""
        try:
            return self.process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self._reader.join(10)


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux's /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def ddp_run_overrides(data_root: Path, log_dir: Path) -> list[str]:
    return [
        *synthetic_overrides(data_root, log_dir),
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "callbacks.progress_bar.refresh_rate=0",
    ]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# A run stopped by a missing rank ends this soon after (the bound: about 30 s).
BOUND_S = 30


@pytest.mark.slow
def test_an_extra_rank_killed_at_start_ends_the_run_with_one_line(synthetic_root, tmp_path):
    run = Run([*ddp_run_overrides(synthetic_root, tmp_path), "trainer.max_epochs=50"])
    run.wait_for(run.extra_rank, "extra rank")
    pid = run.extra_rank()
    os.kill(pid, signal.SIGKILL)  # before it can join the rendezvous
    killed = time.monotonic()
    assert run.finish() == 1, run.output[-3000:]
    ended = run.lines[-1][0]
    assert ended - killed < BOUND_S
    (line,) = error_lines(run.output)
    assert f"error: DDP rank 1 (pid {pid}) exited with status -9 (SIGKILL)" in line
    assert "Starting with 2 processes" not in run.output  # it never trained
    assert "Traceback" not in run.output


@pytest.mark.slow
def test_an_extra_rank_killed_mid_epoch_fails_its_job_and_the_sweep_goes_on(
    synthetic_root, tmp_path
):
    """Job 0 (50 epochs) loses its rank 1 after its first checkpoint; it fails with the rank's
    line, its checkpoint stays whole, and job 1 (2 epochs) still runs."""
    run = Run(["-m", *ddp_run_overrides(synthetic_root, tmp_path), "trainer.max_epochs=50,2"])
    checkpoints = tmp_path / "train" / "multiruns"
    run.wait_for(lambda: any(checkpoints.glob("*/0/checkpoints/last.ckpt")), "checkpoint")
    pid = run.extra_rank()
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert run.finish() == 1, run.output[-3000:]  # a job failed: the sweep's status says so
    failed_at = next(t for t, line in run.lines if "Job failed:" in line)
    assert failed_at - killed < BOUND_S
    (sweep_dir,) = checkpoints.iterdir()
    error = (sweep_dir / "0" / "error.txt").read_text().splitlines()[0]
    assert f"DDP rank 1 (pid {pid}) exited with status -9 (SIGKILL) during the run" in error
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "ok")]
    # the killed job's checkpoint is whole: its weights and the loop state to resume from
    state = torch.load(sweep_dir / "0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] > 0 and "loops" in state
    assert json.loads((sweep_dir / "1" / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_processes_that_never_meet_end_at_the_rendezvous_timeout(synthetic_root, tmp_path):
    run = Run(
        [
            *ddp_run_overrides(synthetic_root, tmp_path),
            "trainer.strategy.rendezvous_timeout=5",
        ]
    )
    run.wait_for(run.extra_rank, "extra rank")
    pid = run.extra_rank()
    os.kill(pid, signal.SIGSTOP)  # alive, but never joins
    stopped = time.monotonic()
    try:
        assert run.finish() == 1, run.output[-3000:]
        assert run.lines[-1][0] - stopped < 5 + BOUND_S
        (line,) = error_lines(run.output)
        assert "did not meet within trainer.strategy.rendezvous_timeout=5 s: 1 of 2" in line
        # rank 0 does not leave the stopped rank behind
        assert Path(f"/proc/{pid}").exists() is False or "Z" in status_of(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def status_of(pid: int) -> str:
    """The state letter of ``pid`` (Z: a zombie, ended but not yet reaped)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return ""


@pytest.mark.slow
def test_every_rank_takes_the_same_steps_per_call(synthetic_root, tmp_path):
    """Two processes with 3 optimizer steps per call end with the weights of one step per
    call, bit for bit: each rank takes the same steps on its share of the same batches."""
    weights = {}
    for steps in (1, 3):
        log_dir = tmp_path / str(steps)
        result = run_script(
            "train.py",
            [
                *ddp_run_overrides(synthetic_root, log_dir),
                "callbacks.figures=null",
                f"model.steps_per_call={steps}",
                "test=false",
            ],
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        checkpoint = only_run_dir(log_dir) / "checkpoints" / "last.ckpt"
        state = torch.load(checkpoint, weights_only=True)
        assert state["global_step"] == 2 * 4  # 4 global batches of 128 an epoch
        weights[steps] = state["state_dict"]
    for key, value in weights[1].items():
        assert torch.equal(value, weights[3][key]), key


def test_a_bad_rendezvous_timeout_is_one_line(synthetic_root, tmp_path):
    result = run_script(
        "train.py",
        [*ddp_run_overrides(synthetic_root, tmp_path), "trainer.strategy.rendezvous_timeout=0"],
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        "error: trainer.strategy.rendezvous_timeout=0 must be positive (seconds the DDP "
        "processes may take to start and meet, e.g. 300)"
    ]
