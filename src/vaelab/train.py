"""Training entry point behind ``train.py``: build everything from the Hydra config, fit,
test the best checkpoint, write ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each entry of a config group that holds several named objects
    (``callbacks``, ``logger``); entries without ``_target_`` or set to null are skipped."""
    if not group:
        return []
    return [
        instantiate(conf)
        for conf in group.values()
        if isinstance(conf, DictConfig) and "_target_" in conf
    ]


def quiet_known_warnings() -> None:
    """Silence Lightning's advice that does not apply to in-memory batches."""
    for pattern in (
        ".*does not have many workers.*",
        ".*`num_workers`.*",
        ".*Trying to infer the `batch_size`.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model described by ``cfg``, test its best checkpoint, return the metrics."""
    quiet_known_warnings()
    if cfg.get("flush_denormal", True):
        torch.set_flush_denormal(True)  # denormals in Adam's state slow CPU epochs by ~20 %
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()  # missing or broken data fails here, before anything is built
    model: L.LightningModule = instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    metrics: dict[str, float | int | str] = {}
    if cfg.get("test", True):
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None)
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
        for callback in trainer.callbacks:  # per-dimension lists, e.g. from TestMetrics
            metrics.update(getattr(callback, "test_metrics", {}))
    best_score = checkpoint.best_model_score if isinstance(checkpoint, ModelCheckpoint) else None
    metrics["val/loss"] = (
        float(best_score) if best_score is not None else fit_metrics.get("val/loss", math.nan)
    )
    metrics.update(
        {f"{k}_last": v for k, v in fit_metrics.items() if k.startswith(("val/", "train/"))}
    )
    metrics.update(
        epochs=trainer.current_epoch, fit_seconds=round(fit_seconds, 3), best_checkpoint=best_path
    )
    write_metrics(metrics, Path(cfg.paths.output_dir) / "metrics.json")
    return metrics


def write_metrics(metrics: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("Metrics written to %s", path)
