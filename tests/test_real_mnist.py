"""One epoch of the default model on the real MNIST files in ../shared/data."""

import json
import os

import pytest
from conftest import SHARED_DATA, run_script

from vaelab.data.files import FILE_NAMES, find_file


def real_mnist_root():
    raw = SHARED_DATA / "MNIST" / "raw"
    if all(find_file(raw, name) for name in FILE_NAMES):
        return SHARED_DATA
    if os.environ.get("CI"):
        pytest.fail(
            f"real MNIST is missing from {raw}: CI must have ../shared/data beside the clone"
        )
    pytest.skip(f"real MNIST not found in {raw}")


@pytest.mark.slow
def test_one_epoch_of_the_default_model_reaches_test_loss_below_150(tmp_path):
    root = real_mnist_root()
    overrides = [
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    result = run_script("train.py", overrides, env={"DATA_ROOT": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = (tmp_path / "train" / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["epochs"] == 1
    assert metrics["test/loss"] < 150, metrics  # the reference reaches 145.8 after one epoch
