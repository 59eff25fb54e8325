"""Training entry point behind ``train.py``: build everything from the Hydra config, fit,
test the best checkpoint, write ``metrics.json``."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import DistributedRunError, TrainingInterrupted
from vaelab.lit.callbacks import wait_for_outputs
from vaelab.lit.fault_tolerance import FitTime, SaveOnInterrupt, signal_name
from vaelab.runs.checkpoints import checkpoint_to_resume
from vaelab.runs.cli import quiet_known_messages, vaelab_cause
from vaelab.runs.config_checks import check_config
from vaelab.runs.distributed import (
    DDPStrategy,
    start_extra_ranks_as_this_job,
    wait_for_extra_ranks,
)
from vaelab.runs.linear_path import resolve_onednn_linear
from vaelab.runs.preflight import refuse_new_run_into
from vaelab.runs.report import print_summary, write_metrics
from vaelab.runs.sweep import continue_job, finished_run
from vaelab.runs.tensorboard import log_run_hparams

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each entry of a config group that holds several named objects
    (``callbacks``, ``logger``); entries without ``_target_`` or set to null are skipped."""
    return [instantiate(conf) for conf in _group_entries(group)]


def _group_entries(group: DictConfig | None) -> list[DictConfig]:
    if not group:
        return []
    return [conf for conf in group.values() if isinstance(conf, DictConfig) and "_target_" in conf]


def _is_tensorboard(conf: DictConfig) -> bool:
    target = get_object(conf._target_)
    return isinstance(target, type) and issubclass(target, TensorBoardLogger)


@contextmanager
def interruptible(trainer: L.Trainer, run_dir: str | Path):
    """Turn Lightning's ways of ending on SIGINT/SIGTERM (``sys.exit(1)`` after Ctrl-C,
    ``SIGTERMException`` after SIGTERM) into one ``TrainingInterrupted``."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as stop:
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)), None)
        name = (saver.signal if saver else None) or signal_name(stop)
        if name is None and not trainer.interrupted:
            raise
        raise TrainingInterrupted(
            name or "SIGINT", saver.saved if saver else None, Path(run_dir)
        ) from None


@contextmanager
def ranks_watched(trainer: L.Trainer):
    """Under ``DDPStrategy``: an error of rank 0 that comes from an extra rank having exited
    (gloo's closed connection, a collective that timed out) becomes that rank's one-line
    ``DistributedRunError``."""
    try:
        yield
    except DistributedRunError:
        raise
    except Exception:
        if isinstance(trainer.strategy, DDPStrategy):
            trainer.strategy.raise_rank_failure("during the run", wait=5.0)
        raise


@contextmanager
def runtime_settings(cfg: DictConfig):
    """Process-wide settings for the run, undone when it ends: the warning filters, the
    filter of Lightning's tips and denormal flushing; and the seeds."""
    flush = bool(cfg.get("flush_denormal", True))
    with quiet_known_messages():
        if flush:
            torch.set_flush_denormal(True)  # denormals in Adam's state slow CPU epochs by ~20 %
        try:
            if cfg.get("seed") is not None:
                L.seed_everything(cfg.seed, workers=True)
            yield
        finally:
            if flush:
                torch.set_flush_denormal(False)


def resumed_step(checkpoint: Path | None) -> int | None:
    """The global step of the checkpoint a run continues from (None for a new run)."""
    if checkpoint is None:
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("global_step", 0))


def build(
    cfg: DictConfig, resume_from: Path | None = None
) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the data module (and find its files), the model and the Trainer with its
    callbacks and loggers. Missing or broken data fails here, before the model is built.
    A run continued from a checkpoint at step S gives its TensorBoard loggers
    ``purge_step=S+1``: TensorBoard drops what the earlier process logged after that
    checkpoint, which this one logs again (no step twice in the charts)."""
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    # model.onednn_linear=auto: the faster linear path on this machine, decided here
    linear_path = resolve_onednn_linear(cfg)
    try:
        model: L.LightningModule = instantiate(cfg.model, _convert_="all", **linear_path)
    except InstantiationException as err:  # a variant refusing an argument: its own line
        cause = vaelab_cause(err)
        if cause is None:
            raise
        raise cause from None
    callbacks = [*instantiate_group(cfg.get("callbacks")), FitTime()]
    aside = automatic_only_settings(model, cfg.trainer)
    step = resumed_step(resume_from)
    loggers = [
        instantiate(conf, purge_step=step + 1)
        if step is not None and _is_tensorboard(conf)
        else instantiate(conf)
        for conf in _group_entries(cfg.get("logger"))
    ]
    start_extra_ranks_as_this_job()  # DDP in a multirun: ranks 1.. run this job, not the sweep
    strategy = cfg.trainer.get("strategy")
    # a plain "ddp" gets vaelab's DDPStrategy: Lightning's, whose start never hangs
    watched = {"strategy": DDPStrategy()} if strategy == "ddp" else {}
    try:
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, **watched, **aside
        )
    except InstantiationException as err:  # e.g. the strategy refusing a value: its own line
        cause = vaelab_cause(err)
        if cause is None:
            raise
        raise cause from None
    return datamodule, model, trainer


# Trainer settings that Lightning applies only under automatic optimization (it refuses them
# for a module that optimizes manually), and the values that turn them off
AUTOMATIC_ONLY = {"gradient_clip_val": None, "accumulate_grad_batches": 1}


def automatic_only_settings(model: L.LightningModule, trainer_cfg: DictConfig) -> dict:
    """For a module that optimizes manually (``automatic_optimization = False`` in its
    constructor, as Lightning's GAN example), the Trainer settings of ``AUTOMATIC_ONLY``
    turned off, each said in one line: such a module clips (``self.clip_gradients``) and
    accumulates in its own ``training_step``. {} for any other module."""
    if model.automatic_optimization:
        return {}
    aside = {}
    for key, off in AUTOMATIC_ONLY.items():
        value = trainer_cfg.get(key)
        if value not in (off, None, 0):
            aside[key] = off
            log.info(
                "trainer.%s=%s set aside: %s optimizes manually (in its own training_step)",
                key,
                value,
                type(model).__name__,
            )
    return aside


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model described by ``cfg``, test its best checkpoint, return the metrics.

    A job of a sweep whose earlier attempt finished returns that attempt's metrics; one that
    stopped continues from its checkpoints (``continue_job``). Bad config values, a missing
    or foreign checkpoint and missing data files raise ``VaelabError`` before any model is
    built; SIGINT/SIGTERM raise ``TrainingInterrupted`` after saving the training state."""
    check_config(cfg)
    earlier = continue_job(cfg)
    if earlier is not None:
        return earlier
    resume_from = checkpoint_to_resume(cfg)
    if resume_from is None:
        refuse_new_run_into(Path(cfg.paths.output_dir), cfg)
    elif (finished := finished_run(cfg)) is not None:
        return finished
    with runtime_settings(cfg):
        return fit_and_test(cfg, resume_from)


def fit_and_test(cfg: DictConfig, resume_from: Path | None) -> dict[str, float]:
    """``train`` once the config and the checkpoint to resume from are checked."""
    datamodule, model, trainer = build(cfg, resume_from)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    with interruptible(trainer, cfg.paths.output_dir), ranks_watched(trainer):
        # weights_only: a checkpoint may hold tensors and plain containers, never code
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_seconds = next(c for c in trainer.callbacks if isinstance(c, FitTime)).seconds
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    metrics: dict[str, float | int | str] = {}
    if cfg.get("test", True):
        # "last": the weights fit ended with (validation may have seen the test set)
        tested = best_path if cfg.get("test_checkpoint", "best") == "best" else ""
        with interruptible(trainer, cfg.paths.output_dir), ranks_watched(trainer):
            trainer.test(model, datamodule=datamodule, ckpt_path=tested or None, weights_only=True)
        metrics["tested_checkpoint"] = tested or "final weights"
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
        for callback in trainer.callbacks:  # per-dimension lists, e.g. from EvaluationMetrics
            metrics.update(getattr(callback, "test_metrics", {}))
    wait_for_outputs()  # the end of fit's PNGs, drawn while the test stage ran
    best_score = checkpoint.best_model_score if isinstance(checkpoint, ModelCheckpoint) else None
    metrics["val/loss"] = (
        float(best_score) if best_score is not None else fit_metrics.get("val/loss", math.nan)
    )
    metrics.update(
        {
            f"{k}_last": v
            for k, v in fit_metrics.items()
            if k.startswith(("val/", "train/")) and k.count("/") == 1
        }
    )
    metrics.update(
        epochs=trainer.current_epoch, fit_seconds=round(fit_seconds, 3), best_checkpoint=best_path
    )
    if resume_from is not None:
        metrics["resumed_from"] = str(resume_from)  # fit_seconds counts the earlier processes
    if trainer.is_global_zero:  # one writer under DDP; every rank returns the same metrics
        log_run_hparams(trainer, cfg, metrics)
        write_metrics(metrics, Path(cfg.paths.output_dir) / "metrics.json")
        print_summary(metrics, Path(cfg.paths.output_dir), tensorboard_to_open(trainer))
    wait_for_extra_ranks(trainer)  # DDP in a multirun: the job ends with all its ranks
    return metrics


def tensorboard_to_open(trainer: L.Trainer) -> Path | None:
    """The folder to open TensorBoard on: the run's events, or for a job of a sweep the
    sweep's ``tensorboard/`` folder, where its jobs sit side by side."""
    dirs = [Path(lg.log_dir) for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if not dirs:
        return None
    return dirs[0].parent if dirs[0].parent.name == "tensorboard" else dirs[0]
