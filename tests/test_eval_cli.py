"""eval.py and sample.py end to end: a tiny checkpoint trained on the synthetic data by
train.py (whose test stage runs the EvaluationMetrics callback), then both scripts as users run
them, with small k and sample counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from conftest import CONFIG_DIR, run_script, synthetic_overrides
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.errors import VaelabError
from vaelab.runs.evaluate import evaluate

LATENT = 4


def data_overrides(root: Path, log_dir: Path) -> list[str]:
    return [
        f"paths.data_dir={root}",
        f"paths.log_dir={log_dir}",
        "data.checksums=null",
        "data.download=false",
    ]


def only_run_dir(folder: Path) -> Path:
    (run,) = folder.iterdir()
    return run


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """(checkpoint, train metrics) of a one-epoch run of a small model."""
    log_dir = tmp_path_factory.mktemp("eval-logs")
    result = run_script(
        "train.py",
        synthetic_overrides(synthetic_root, log_dir)
        + [
            "trainer.max_epochs=1",
            f"model.latent_dim={LATENT}",
            "model.hidden_dims=[64]",
            "callbacks.test_metrics.nll_k=5",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(log_dir / "train" / "runs")
    metrics = json.loads((run / "metrics.json").read_text())
    return run / "checkpoints" / "last.ckpt", metrics


@pytest.mark.slow
def test_train_test_stage_logs_the_cheap_metrics(trained):
    _, metrics = trained
    assert 0 <= metrics["test/active_units"] <= LATENT
    assert metrics["test/nll_k"] == 5 and metrics["test/nll_normalized"] == 1.0  # binary data
    assert math.isfinite(metrics["test/nll"])
    # the IWAE estimate (k=5) is at least as tight as the single-sample ELBO, up to noise
    assert metrics["test/nll"] <= metrics["test/loss"] + 1.0
    assert len(metrics["test/kl_per_dim"]) == LATENT
    assert sum(metrics["test/kl_per_dim"]) == pytest.approx(metrics["test/kl"], rel=1e-3)
    assert len(metrics["test/active_unit_variance"]) == LATENT


@pytest.mark.slow
def test_eval_writes_metrics_figures_tensorboard_and_table(trained, synthetic_root, tmp_path):
    ckpt, _ = trained
    result = run_script(
        "eval.py",
        [f"ckpt_path={ckpt}", *data_overrides(synthetic_root, tmp_path)]
        + [
            "nll.k=8",
            "elbo_samples=2",
            "sample_quality.num_samples=100",
            "sample_quality.classifier_epochs=1",
            f"sample_quality.cache_dir={tmp_path / 'classifier'}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "eval" / "runs")
    m = json.loads((run / "metrics.json").read_text())
    for key in ("test/loss", "test/recon", "test/kl", "test/elbo", "test/nll",
                "samples/class_entropy", "samples/mean_confidence", "samples/frechet_distance",
                "classifier/test_accuracy"):  # fmt: skip
        assert math.isfinite(m[key]), key
    assert m["test/loss"] == pytest.approx(m["test/recon"] + m["test/kl"])  # beta = 1
    assert m["nll_k"] == 8 and m["num_test_images"] == 200
    assert m["data_binary"] and m["nll_normalized"]
    assert -m["test/nll"] >= m["test/elbo"] - 1.0  # the k=8 bound is no looser than the ELBO
    assert len(m["test/kl_per_dim"]) == len(m["test/active_unit_variance"]) == LATENT
    assert 0 <= m["test/active_units"] <= LATENT
    assert len(m["test/recon_per_class"]) == 10
    assert sum(m["samples/class_histogram"]) == pytest.approx(1.0)
    assert 0 <= m["samples/class_entropy"] <= math.log(10) + 1e-9
    assert Path(m["classifier/path"]).is_file()

    for name in ("kl_per_dim", "active_units", "recon_per_class", "samples", "sample_classes"):
        image = plt.imread(run / "figures" / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"eval/test/nll", "eval/test/kl_per_dim", "eval/test/active_units"} <= set(
        tags["scalars"]
    )
    assert len(events.Scalars("eval/test/kl_per_dim")) == LATENT
    assert "eval/sample_grid" in tags["images"] and "eval/kl_per_dim" in tags["images"]
    assert "test/nll (k=8)" in result.stdout and "samples/frechet_distance" in result.stdout


@pytest.mark.slow
def test_sample_writes_grid_interpolation_and_traversal(trained, synthetic_root, tmp_path):
    ckpt, _ = trained
    result = run_script(
        "sample.py",
        [f"ckpt_path={ckpt}", *data_overrides(synthetic_root, tmp_path)]
        + ["num_samples=16", "interpolation.indices=[3,7]", "traversal.dim=1"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "sample" / "runs")
    for name in ("samples", "interpolation", "traversal"):
        image = plt.imread(run / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 50, name


def test_eval_without_ckpt_path_is_one_error_line():
    result = run_script("eval.py", [])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: ckpt_path is required: pass ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"
    ]


def test_eval_refuses_an_architecture_override_in_one_line():
    # Hydra alone would evaluate the checkpoint's model and ignore +model.flow_steps=2
    result = run_script("eval.py", ["ckpt_path=x.ckpt", "+model.flow_steps=2"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: +model.flow_steps=2: eval.py takes the model, its architecture included, from "
        "ckpt_path; drop it, or train that model with python train.py model.flow_steps=2"
    ]


def compose_eval(overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def test_eval_with_missing_or_broken_checkpoint_says_so(tmp_path):
    cfg = compose_eval([f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path)
    with pytest.raises(VaelabError, match=r"nope.ckpt does not exist"):
        evaluate(cfg)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    cfg = compose_eval([f"ckpt_path={broken}"], tmp_path)
    with pytest.raises(VaelabError, match=r"broken.ckpt: not a PyTorch checkpoint") as err:
        evaluate(cfg)
    assert "truncated (UnpicklingError " in str(err.value)  # names what went wrong
