"""Shared fixtures: a small synthetic data set in MNIST's file format, and config composition."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import vaelab.runs  # noqa: F401  (registers ${vaelab_root:})

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
SHARED_DATA = ROOT.parent / "shared" / "data"


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``compress``."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def make_synthetic_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Write a learnable MNIST-format data set into ``root/MNIST/raw``: each class is a
    noisy copy of its own random blob pattern, so a VAE's loss falls within an epoch."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prototypes = (rng.random((10, 28, 28)) < 0.2).astype(np.float64)

    def split(n):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.random((n, 28, 28)) < 0.05
        images = np.abs(prototypes[labels] - noise) * 255
        return images.astype(np.uint8), labels.astype(np.uint8)

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = split(n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session", autouse=True)
def linear_path_cache(tmp_path_factory) -> Path:
    """The verdicts of ``model.onednn_linear=auto`` go to a folder of this test session (runs
    started by tests inherit it), not to the user's cache."""
    folder = tmp_path_factory.mktemp("vaelab-cache")
    previous = os.environ.get("VAELAB_CACHE_DIR")
    os.environ["VAELAB_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("VAELAB_CACHE_DIR", None)
    else:
        os.environ["VAELAB_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root with a synthetic 600/200-image MNIST in torchvision's layout."""
    return make_synthetic_mnist(tmp_path_factory.mktemp("synthetic"))


# Overrides that point a run at the synthetic data and keep it to seconds.
def synthetic_overrides(data_root: Path, log_dir: Path) -> list[str]:
    return [
        f"paths.data_dir={data_root}",
        f"paths.log_dir={log_dir}",
        "data.checksums=null",
        "data.download=false",
        "data.val_size=100",
        "data.eval_batch_size=64",
        "data.batch_size=64",
        "trainer.max_epochs=2",
        "callbacks.figures.max_latent_points=100",
    ]


def compose_train(overrides: list[str] | None = None, output_dir: Path | None = None) -> DictConfig:
    """Compose ``configs/train.yaml`` in-process, with ``paths.output_dir`` set (no Hydra run)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides or [], return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or ROOT / "logs" / "compose-test")
    return cfg


def run_script(script: str, args: list[str], env: dict | None = None, timeout: int = 300):
    """Run ``python <script> args`` from the repository root; returns the CompletedProcess.
    A run still going after ``timeout`` seconds fails the test with the Python stacks of its
    whole process group (the run and any DDP ranks it started: ``PYTHONFAULTHANDLER`` prints
    them on SIGABRT), and nothing of the group is left running."""
    full_env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    full_env.update(PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **(env or {}))
    command = [sys.executable, str(ROOT / script), *args]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the ranks it starts join it
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(process.pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # stuck even in its abort handler
            _signal_group(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
    _signal_group(process.pid, signal.SIGKILL)  # a rank that outlived its run
    if timed_out:
        pytest.fail(
            f"{script} still ran after {timeout} s; the end of its output, then the stacks of "
            f"its processes:\n{stdout[-2000:]}\n{stderr[-10000:]}"
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has no process left
        os.killpg(pgid, signum)


@pytest.fixture(scope="session")
def trained_run_result(synthetic_root, tmp_path_factory):
    """(run dir, CompletedProcess) of ``python train.py`` on the synthetic data (2 epochs)."""
    log_dir = tmp_path_factory.mktemp("logs")
    result = run_script("train.py", synthetic_overrides(synthetic_root, log_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (log_dir / "train" / "runs").iterdir()
    return run, result


@pytest.fixture(scope="session")
def trained_run(trained_run_result) -> Path:
    """The run dir of ``python train.py`` on the synthetic data, shared by tests."""
    return trained_run_result[0]
