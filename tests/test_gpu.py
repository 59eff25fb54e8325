"""The GPU path: the default config on a GPU with the data resident there, bf16-mixed,
torch.compile, eval.py and sample.py on a GPU checkpoint, a GPU checkpoint on the CPU, DDP with
one GPU, and no host sync in a training step (``torch.cuda.set_sync_debug_mode("error")``).

Marked ``gpu`` and skipped without CUDA; ``scripts/gpu_check.sh`` runs them on a GPU machine."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from conftest import compose_train, run_script, synthetic_overrides

from vaelab.lit.module import VAELitModule
from vaelab.runs.train import build, runtime_settings, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_epochs=1"]


def gpu_overrides(synthetic_root, tmp_path, *extra: str) -> list[str]:
    return [*synthetic_overrides(synthetic_root, tmp_path), *GPU, *extra]


def only_run_dir(log_dir):
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def gpu_run(synthetic_root, tmp_path_factory):
    """The run dir of ``python train.py trainer.accelerator=gpu`` (one epoch)."""
    log_dir = tmp_path_factory.mktemp("gpu_logs")
    result = run_script("train.py", gpu_overrides(synthetic_root, log_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(log_dir)


def test_default_config_trains_on_the_gpu_with_the_data_resident_there(synthetic_root, tmp_path):
    cfg = compose_train(gpu_overrides(synthetic_root, tmp_path), tmp_path / "run")
    with runtime_settings(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.fit(model, datamodule=datamodule)
    assert model.device.type == "cuda"
    for split in (datamodule.data_train, datamodule.data_val, datamodule.data_test):
        assert split.images.device.type == "cuda"  # no per-batch host-to-device copy
    x, _ = next(iter(datamodule.train_dataloader()))
    assert x.device.type == "cuda"
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))


def test_bf16_mixed_matches_full_precision(synthetic_root, tmp_path):
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        cfg = compose_train(
            gpu_overrides(synthetic_root, out, f"trainer.precision={precision}"), out / "run"
        )
        losses[precision] = train(cfg)["test/loss"]
    assert math.isfinite(losses["bf16-mixed"])
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=0.05)


def test_compiled_model_trains_and_saves_the_plain_parameter_names(synthetic_root, tmp_path):
    cfg = compose_train(gpu_overrides(synthetic_root, tmp_path, "model.compile=true"), tmp_path)
    metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plain = VAELitModule(**{k: v for k, v in checkpoint["hyper_parameters"].items()})
    assert set(checkpoint["state_dict"]) == set(plain.state_dict())


def test_eval_and_sample_run_on_a_gpu_checkpoint(gpu_run, synthetic_root, tmp_path):
    checkpoint = gpu_run / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={checkpoint}", f"paths.data_dir={synthetic_root}", "data.checksums=null"]
    common += [f"paths.log_dir={tmp_path}", "data.download=false", "device=cuda"]
    result = run_script(
        "eval.py", [*common, "nll.k=20", "elbo_samples=2", "sample_quality.enabled=false"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = (tmp_path / "eval" / "runs").iterdir()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nll"])
    result = run_script("sample.py", [*common, "num_samples=16"])
    assert result.returncode == 0, result.stderr[-3000:]
    (sample_dir,) = (tmp_path / "sample" / "runs").iterdir()
    assert (sample_dir / "samples.png").stat().st_size > 0


def test_a_gpu_checkpoint_loads_and_evaluates_on_the_cpu(gpu_run):
    checkpoint = gpu_run / "checkpoints" / "last.ckpt"
    model = VAELitModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.no_grad():
        recon = model.net.decode(model.net.posterior(torch.rand(4, 1, 28, 28)).mean)
    assert recon.shape == (4, 1, 28, 28) and torch.isfinite(recon).all()


def test_ddp_with_one_gpu(synthetic_root, tmp_path):
    result = run_script(
        "train.py",
        gpu_overrides(synthetic_root, tmp_path, "trainer=ddp", "trainer.devices=1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert math.isfinite(metrics["test/loss"]) and metrics["epochs"] == 1


class ErrorOnSyncInQuietSteps(L.Callback):
    """Sets ``torch.cuda.set_sync_debug_mode("error")`` from the start of each training batch
    on which nothing is shown or checked to the next batch's start: any device-to-host
    copy or synchronization there raises."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        quiet = (batch_idx + 1) % self.every != 0 and batch_idx + 1 < trainer.num_training_batches
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_training_step_does_not_synchronize_with_the_host(synthetic_root, tmp_path, precision):
    every = 5
    overrides = gpu_overrides(
        synthetic_root,
        tmp_path,
        "data.batch_size=16",  # 32 batches
        f"trainer.log_every_n_steps={every}",
        f"callbacks.progress_bar.refresh_rate={every}",
        f"trainer.precision={precision}",
    )
    cfg = compose_train(overrides, tmp_path / "run")
    with runtime_settings(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.insert(0, ErrorOnSyncInQuietSteps(every))
        trainer.fit(model, datamodule=datamodule)  # raises at the first sync of a quiet step
    assert trainer.global_step == 32
