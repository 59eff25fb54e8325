"""The figures of every epoch in TensorBoard at their epoch's step, their PNGs kept on an
interruption, and a renderer that fails costing one warning line, never the run."""

import logging
import signal
import subprocess
import sys
import time

from conftest import ROOT, compose_train, synthetic_overrides
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.evaluation.plotting import LatentSpacePlot
from vaelab.runs.train import train

IMAGES = ["val/reconstructions", "val/samples", "val/interpolation", "val/latent_space"]
PNGS = ["reconstructions", "samples", "interpolation", "latent_space"]
SMALL = [
    "model.hidden_dims=[32]",
    "callbacks.figures.projector_points=0",
    "callbacks.test_metrics.nll_k=2",
]


def logged_steps(run_dir) -> dict[str, list[int]]:
    """The steps of each image tag and of ``val/loss`` in the run's TensorBoard events."""
    steps: dict[str, list[int]] = {}
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            steps.setdefault(tag, []).extend(e.step for e in acc.Images(tag))
        if "val/loss" in acc.Tags()["scalars"]:
            steps.setdefault("val/loss", []).extend(e.step for e in acc.Scalars("val/loss"))
    return {tag: sorted(s) for tag, s in steps.items()}


def test_three_epochs_give_three_images_per_tag_at_the_val_scalars_steps(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    overrides = synthetic_overrides(synthetic_root, tmp_path) + SMALL + ["trainer.max_epochs=3"]
    train(compose_train(overrides, run_dir))
    steps = logged_steps(run_dir)
    # 500 training images in batches of 64: 8 steps an epoch, the scalars at 8 * epoch - 1
    assert steps["val/loss"] == [7, 15, 23]
    for tag in IMAGES:
        assert steps[tag] == steps["val/loss"], tag
    for name in PNGS:
        with Image.open(run_dir / "figures" / f"{name}.png") as image:
            image.verify()


def test_a_renderer_that_fails_is_one_warning_line_and_the_run_goes_on(
    synthetic_root, tmp_path, monkeypatch, caplog
):
    def broken(self, points, labels):
        raise RuntimeError("no canvas\nsecond line")

    monkeypatch.setattr(LatentSpacePlot, "png", broken)
    run_dir = tmp_path / "run"
    overrides = synthetic_overrides(synthetic_root, tmp_path) + SMALL
    with caplog.at_level(logging.WARNING, logger="vaelab.lit.callbacks"):
        metrics = train(compose_train(overrides, run_dir))
    assert metrics["epochs"] == 2 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    warned = [r.getMessage() for r in caplog.records if r.name == "vaelab.lit.callbacks"]
    assert warned[:2] == [
        f"The figures of epoch {epoch} were not drawn (RuntimeError: no canvas); training goes on"
        for epoch in (1, 2)
    ]
    # what did not fail is still there: the grids in TensorBoard, the PNGs at the end
    assert logged_steps(run_dir)["val/samples"] == [7, 15]
    for name in PNGS:
        assert (run_dir / "figures" / f"{name}.png").is_file(), name


def test_sigterm_keeps_the_last_epochs_pngs(synthetic_root, tmp_path):
    args = (
        synthetic_overrides(synthetic_root, tmp_path)
        + SMALL
        + [
            "data.batch_size=16",  # 32 steps an epoch: long enough to be interrupted in
            "trainer.max_epochs=50",
            "callbacks.progress_bar.refresh_rate=0",
        ]
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    runs = tmp_path / "train" / "runs"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        # last.ckpt is written after the epoch's validation, which drew the figures
        if runs.exists() and any(runs.glob("*/checkpoints/last.ckpt")):
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    (run_dir,) = runs.iterdir()
    for name in PNGS:
        with Image.open(run_dir / "figures" / f"{name}.png") as image:
            image.verify()
