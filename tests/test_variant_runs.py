"""Each variant and a data setting carried end to end: train.py with model=vampprior, iaf and
hvae, then eval.py (twice: the same numbers) and sample.py on its checkpoint with no model or
data overrides."""

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
from vaelab.science.variants.hvae import HVAE
from vaelab.science.variants.iaf import IAF
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


# each variant of the seam, small: (name, its overrides, its class, latent sizes)
VARIANTS = {
    "vampprior": (["model.num_pseudo_inputs=10", "model.hidden_dims=[32]", "model.latent_dim=3"],
                  VampPrior, {"z": 3}),
    "iaf": (["model.hidden_dims=[32]", "model.latent_dim=3", "model.flow_hidden=16",
             "model.context_dim=8"], IAF, {"z": 3}),
    "hvae": (["model.hidden_dims=[[32],[16]]", "model.latent_dim=[4,2]"], HVAE,
             {"z1": 4, "z2": 2}),
}  # fmt: skip
# what differs between two evaluations of one checkpoint besides the numbers: times, paths
NOT_NUMBERS = ("seconds", "checkpoint", "output_dir", "run_dir", "time")


def numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(word in k for word in NOT_NUMBERS)}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_run(request, synthetic_root, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    log_dir = tmp_path_factory.mktemp(f"{name}-logs")
    result = run_script(
        "train.py",
        synthetic_overrides(synthetic_root, log_dir)
        + [f"model={name}", *VARIANTS[name][0], "trainer.max_epochs=1"]
        + ["callbacks.test_metrics.nll_k=4", "callbacks.test_metrics.nll_images=50"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return name, only_dir(log_dir / "train" / "runs")


@pytest.mark.slow
def test_each_variant_trains_evaluates_and_samples(variant_run, synthetic_root, tmp_path):
    name, run = variant_run
    _, cls, sizes = VARIANTS[name]
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["test/nll"])
    assert metrics["test/nll_images"] == 50  # the end-of-training estimate's images
    assert "test/kl_per_dim" not in metrics  # no closed-form KL: not defined per dimension
    # active units over every latent group, the groups side by side
    assert len(metrics["test/active_unit_variance"]) == sum(sizes.values())
    # a hierarchy: the training run's metrics.json gives the active units of each layer too
    layers = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if "active_units/" in k}
    if len(sizes) > 1:
        assert set(layers) == set(sizes)
        assert sum(layers.values()) == metrics["test/active_units"]
    else:
        assert not layers
    ckpt = run / "checkpoints" / "last.ckpt"
    model = VAELitModule.load_from_checkpoint(ckpt)  # no config: the variant from hparams
    assert isinstance(model.net, cls) and model.net.latent_sizes == sizes
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"val/samples", "val/reconstructions"} <= set(events.Tags()["images"])

    first = quick_eval(ckpt, synthetic_root, tmp_path / "a")
    assert math.isfinite(first["test/nll"]) and first["latent_dim"] == sum(sizes.values())
    assert first["latent_sizes"] == sizes
    if len(sizes) > 1:  # a hierarchy: active units per latent group, summing to the total
        per_group = first["test/active_units_per_group"]
        assert (
            set(per_group) == set(sizes) and sum(per_group.values()) == first["test/active_units"]
        )
    assert first["test/loss"] == pytest.approx(first["test/recon"] + first["test/kl"])
    second = quick_eval(ckpt, synthetic_root, tmp_path / "b")  # every draw seeded: the same
    assert numbers(second) == numbers(first)
    # a hierarchy: a unit of its top layer traversed, its top layer interpolated
    upper = [f"traversal.dim={sizes['z1']}", "interpolation.layer=z2"] if len(sizes) > 1 else []
    result = run_script(
        "sample.py",
        [f"ckpt_path={ckpt}", *data_args(synthetic_root, tmp_path), "num_samples=9", *upper],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = only_dir(tmp_path / "sample" / "runs")
    for figure in ("samples", "interpolation", "traversal"):
        assert plt.imread(out / f"{figure}.png").ndim == 3


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


def test_the_final_table_gives_a_hierarchys_active_units_per_layer():
    from rich.console import Console

    from vaelab.runs.report import summary_table

    metrics = {"val/active_units_last": 5, "test/active_units/z1": 4, "test/active_units/z2": 1}
    console = Console(width=80, record=True)
    console.print(summary_table(metrics))
    text = console.export_text()
    rows = [line for line in text.splitlines() if "active units" in line]
    assert [r.split("│")[1].strip() for r in rows] == [
        "active units (val)",
        "active units of z1 (test)",
        "active units of z2 (test)",
    ]
    assert [r.split("│")[2].strip() for r in rows] == ["5", "4", "1"]
