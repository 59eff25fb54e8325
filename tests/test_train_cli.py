"""``python train.py`` as a user runs it, on synthetic MNIST-format data."""

import csv
import io
import json
import math
import sys

import pytest
from conftest import run_script, synthetic_overrides
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.lit.module import VAELitModule

FIGURES = ["training_curves", "reconstructions", "samples", "interpolation", "latent_space"]
SCALARS = [f"{s}/{t}" for s in ("train", "val", "test") for t in ("loss", "recon", "kl")]
IMAGES = ["val/reconstructions", "val/samples", "val/interpolation", "val/latent_space"]


@pytest.fixture
def run_dir(trained_run):
    return trained_run


def test_tensorboard_has_scalar_and_image_tags(run_dir):
    tags = {"scalars": set(), "images": set()}
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    assert set(SCALARS) <= tags["scalars"]
    assert set(IMAGES) <= tags["images"]


def image_steps(run_dir, tag: str = "val/samples") -> list[int]:
    """The TensorBoard steps at which ``tag`` was logged in ``run_dir``."""
    steps = []
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        if tag in acc.Tags()["images"]:
            steps += [e.step for e in acc.Images(tag)]
    return sorted(steps)


def test_images_are_logged_every_n_epochs_and_after_the_last(run_dir, synthetic_root, tmp_path):
    # the shared run: 2 epochs with the default every_n_epochs=1, at the global step of each
    # epoch's val scalars: 8 steps an epoch (500 images, batch 64)
    assert image_steps(run_dir) == [8 - 1, 2 * 8 - 1]
    result = run_script(
        "train.py",
        synthetic_overrides(synthetic_root, tmp_path)
        + [
            "trainer.max_epochs=5",
            "callbacks.figures.every_n_epochs=2",
            "callbacks.test_metrics=null",
        ],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    for tag in IMAGES:
        assert image_steps(run, tag) == [8 * epoch - 1 for epoch in (2, 4, 5)], tag


@pytest.mark.parametrize("name", FIGURES)
def test_figure_png_exists_and_decodes(run_dir, name):
    with Image.open(run_dir / "figures" / f"{name}.png") as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 50


def test_metrics_json_is_complete_and_finite(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/loss", "test/recon", "test/kl", "val/loss", "fit_seconds"):
        assert math.isfinite(metrics[key]), key
    assert metrics["epochs"] == 2
    assert metrics["test/nll_images"] == 200  # all 200 synthetic test images (under 1000)
    assert metrics["train/samples_per_sec_last"] > 0  # EpochThroughput, logged each epoch
    assert metrics["test/loss"] == pytest.approx(
        metrics["test/recon"] + metrics["test/kl"], rel=1e-5
    )


def test_best_and_last_checkpoints_load_without_config(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    model = VAELitModule.load_from_checkpoint(metrics["best_checkpoint"])
    assert model.hparams.latent_dim == 32 and model.net.latent_dim == 32


def test_multirun_writes_a_summary_with_one_row_per_job(synthetic_root, tmp_path):
    args = ["model.latent_dim=2,4", "trainer.max_epochs=1"]
    result = run_script("train.py", ["-m", *synthetic_overrides(synthetic_root, tmp_path), *args])
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.latent_dim"] for r in rows] == ["2", "4"]
    assert all(math.isfinite(float(r["test/loss"])) and r["status"] == "ok" for r in rows)
    for row in rows:  # the job's own test metrics, NLL and active units included
        job = json.loads((sweep / row["job"] / "metrics.json").read_text())
        for key in ("test/loss", "test/nll", "test/active_units"):
            assert float(row[key]) == pytest.approx(job[key], rel=1e-4)
    summary = (sweep / "summary.md").read_text()
    assert "| model.latent_dim |" in summary
    # counts as integers (nll_k 100, nll_images 200), losses with three decimals
    first = summary.splitlines()[2].split(" | ")
    header = summary.splitlines()[0].split(" | ")
    assert first[header.index("test/nll_k")] == "100"
    assert first[header.index("test/nll_images")] == "200"
    assert len(first[header.index("test/loss")].split(".")[1]) == 3
    with Image.open(sweep / "summary.png") as image:
        image.verify()


def test_missing_data_fails_with_one_line_before_training(tmp_path):
    overrides = [
        f"paths.data_dir={tmp_path / 'empty'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "data.mirrors=[http://127.0.0.1:9]",
    ]
    result = run_script("train.py", overrides)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "empty" / "MNIST" / "raw") in error_lines[0]
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_terminal_ends_with_metrics_paths_and_the_tensorboard_command(trained_run_result):
    run, result = trained_run_result
    metrics = json.loads((run / "metrics.json").read_text())
    tail = result.stdout[result.stdout.rindex("vaelab run") :]
    assert f"{metrics['test/loss']:.2f}" in tail
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in tail
    assert f"tensorboard --logdir {run / 'tensorboard'}" in tail


def test_terminal_has_no_lightning_tips_or_notes_that_do_not_apply(trained_run_result):
    _, result = trained_run_result
    output = result.stdout + result.stderr
    for noise in (
        "Tip:",  # Lightning's litlogger / litmodels advertisements
        "litlogger",
        "Skipping setting a default `ModelSummary`",
        "was called without a model",  # SaveOnInterrupt makes Lightning look for a checkpoint
        "no last checkpoint available",
    ):
        assert noise not in output, noise
    # the run's own lines stay: devices, the model summary, progress, the summary and paths
    for line in ("GPU available:", "Trainable params", "Epoch 1", "vaelab run", "run dir:"):
        assert line in output, line


def test_an_error_starts_on_a_line_of_its_own_after_a_progress_bar(monkeypatch):
    """A run stopped mid-epoch (a full disk) leaves its bar drawn without a newline: the
    error line must not be glued to it."""
    from tqdm import tqdm

    from vaelab.errors import VaelabError
    from vaelab.runs.cli import print_error

    terminal = io.StringIO()  # stdout and stderr on one terminal
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = tqdm(total=10, file=terminal, desc="Epoch 0")
    bar.update(3)
    try:
        print_error(VaelabError("no space left on the device"))
    finally:
        bar.close()
    lines = terminal.getvalue().replace("\r", "\n").splitlines()
    assert "error: no space left on the device" in lines
