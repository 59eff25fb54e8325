"""A variant and a data setting carried end to end: train.py with model=vampprior, then
eval.py and sample.py on its checkpoint with no model or data overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import make_synthetic_mnist, run_script, synthetic_overrides, write_idx
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.data.idx import read_idx
from vaelab.lit.module import VAELitModule
from vaelab.science.variants.vampprior import VampPrior


def only_dir(folder: Path) -> Path:
    (run,) = folder.iterdir()
    return run


def data_args(root: Path, log_dir: Path) -> list[str]:
    return [f"paths.data_dir={root}", f"paths.log_dir={log_dir}", "data.checksums=null"]


def quick_eval(ckpt: Path, root: Path, log_dir: Path, *extra: str) -> dict:
    result = run_script(
        "eval.py",
        [f"ckpt_path={ckpt}", *data_args(root, log_dir), "nll.k=4", "elbo_samples=1"]
        + ["sample_quality.enabled=false", "data.download=false", *extra],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_dir(log_dir / "eval" / "runs")
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def vampprior_run(synthetic_root, tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("vamp-logs")
    result = run_script(
        "train.py",
        synthetic_overrides(synthetic_root, log_dir)
        + ["model=vampprior", "model.num_pseudo_inputs=10", "model.hidden_dims=[32]"]
        + ["model.latent_dim=3", "trainer.max_epochs=1", "callbacks.test_metrics.nll_k=4"]
        + ["callbacks.test_metrics.nll_images=50"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return only_dir(log_dir / "train" / "runs")


@pytest.mark.slow
def test_vampprior_trains_evaluates_and_samples(vampprior_run, synthetic_root, tmp_path):
    metrics = json.loads((vampprior_run / "metrics.json").read_text())
    assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["test/nll"])
    assert metrics["test/nll_images"] == 50  # the end-of-training estimate's images
    assert "test/kl_per_dim" not in metrics  # the mixture prior does not factorize
    assert len(metrics["test/active_unit_variance"]) == 3
    ckpt = vampprior_run / "checkpoints" / "last.ckpt"
    model = VAELitModule.load_from_checkpoint(ckpt)  # no config: the variant from hparams
    assert isinstance(model.net, VampPrior) and model.net.pseudo_inputs.shape[0] == 10
    events = EventAccumulator(str(vampprior_run / "tensorboard"))
    events.Reload()
    assert {"val/samples", "val/reconstructions"} <= set(events.Tags()["images"])

    m = quick_eval(ckpt, synthetic_root, tmp_path)
    assert math.isfinite(m["test/nll"]) and m["latent_dim"] == 3
    assert m["test/loss"] == pytest.approx(m["test/recon"] + m["test/kl"])
    result = run_script(
        "sample.py",
        [f"ckpt_path={ckpt}", *data_args(synthetic_root, tmp_path), "num_samples=9"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_dir(tmp_path / "sample" / "runs")
    assert plt.imread(run / "samples.png").ndim == 3


@pytest.fixture(scope="module")
def grey_root(tmp_path_factory) -> Path:
    """The synthetic data set with grey pixels (values 0 and 153 instead of 0 and 255)."""
    root = make_synthetic_mnist(tmp_path_factory.mktemp("grey-data"), n_train=300, n_test=100)
    raw = root / "MNIST" / "raw"
    for prefix in ("train", "t10k"):
        path = raw / f"{prefix}-images-idx3-ubyte.gz"
        images = read_idx(path)
        path.unlink()
        write_idx(raw / f"{prefix}-images-idx3-ubyte", (images * 0.6).astype(np.uint8))
    return root


@pytest.mark.slow
def test_eval_takes_the_binarization_of_the_checkpoint(grey_root, tmp_path):
    result = run_script(
        "train.py",
        synthetic_overrides(grey_root, tmp_path / "train")
        + ["data.binarize=dynamic", "trainer.max_epochs=1", "model.hidden_dims=[32]"]
        + ["callbacks.figures=null", "logger=[]", "test=false"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = only_dir(tmp_path / "train" / "train" / "runs") / "checkpoints" / "last.ckpt"
    binarized = quick_eval(ckpt, grey_root, tmp_path / "a")
    assert binarized["data"]["binarize"] == "dynamic"
    assert binarized["data_binary"] and binarized["nll_normalized"]
    grey = quick_eval(ckpt, grey_root, tmp_path / "b", "data.binarize=none")
    assert grey["data"]["binarize"] == "none"
    assert not grey["data_binary"] and not grey["nll_normalized"]
