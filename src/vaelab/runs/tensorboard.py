"""TensorBoard as the place to compare runs: where a run's events go (a sweep's jobs side by
side, named by their swept values), and the HParams record of every finished run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

# the main settings every run records in HParams (plus what its command line set)
HPARAM_KEYS = (
    "model.net",
    "model.architecture",
    "model.hidden_dims",
    "model.latent_dim",
    "model.batch_norm",
    "model.likelihood",
    "model.beta",
    "model.kl_schedule",
    "model.free_bits",
    "model.objective",
    "model.k",
    "model.optimizer.lr",
    "data.dataset",
    "data.batch_size",
    "data.binarize",
    "trainer.max_epochs",
    "trainer.precision",
    "trainer.gradient_clip_val",
    "seed",
)
HPARAM_GROUPS = ("model", "kl", "data", "trainer", "experiment")
# a finished run's final figures (metrics.json keys) and their HParams names
HPARAM_METRICS = {
    "val/loss": "val/loss_best",
    "test/loss": "test/loss",
    "test/recon": "test/recon",
    "test/kl": "test/kl",
    "test/nll": "test/nll",
    "test/active_units": "test/active_units",
}


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys a multirun varies: its sweep overrides (``model.latent_dim=2,8``) and the
    sweeper's ``params``, read from the ``multirun.yaml`` Hydra writes in the sweep dir."""
    record = yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}
    hydra = record.get("hydra") or {}
    parser = OverridesParser.create()
    keys = [
        o.key_or_group
        for o in parser.parse_overrides((hydra.get("overrides") or {}).get("task") or [])
        if o.is_sweep_override()
    ]
    return keys + [k for k in (hydra.get("sweeper") or {}).get("params") or {} if k not in keys]


def job_name(overrides: list[str], keys: list[str]) -> str:
    """``latent_dim=8,beta=4``: a job's values of the swept ``keys`` (each by the last part of
    its name), as a file name."""
    values = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in keys:
            values[key.lstrip("+~")] = value
    parts = [f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in keys if k in values]
    return ",".join(parts).replace("/", "_")


def tensorboard_dir(output_dir: str) -> str:
    """Where a run writes its TensorBoard events (``${vaelab_tensorboard_dir:...}``):
    ``<run dir>/tensorboard`` for a single run; for a job of a sweep (a run dir beside the
    sweep's ``multirun.yaml``, also when resumed) ``<sweep dir>/tensorboard/<job_name>``, so
    that ``tensorboard --logdir <sweep dir>/tensorboard`` names each run by its swept values."""
    run_dir = Path(output_dir)
    sweep_dir = run_dir.parent
    if not HydraConfig.initialized() or not (sweep_dir / "multirun.yaml").is_file():
        return str(run_dir / "tensorboard")
    name = job_name(list(HydraConfig.get().overrides.task), swept_keys(sweep_dir))
    return str(sweep_dir / "tensorboard" / (name or run_dir.name))


def _typed(value: Any) -> bool | int | float | str:
    """A value as HParams shows it: numbers and booleans as they are, anything else as text."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value).replace(" ", "")


def run_hparams(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters, flat and typed: ``HPARAM_KEYS``, the chosen config groups,
    and every key its command line set."""
    keys = list(HPARAM_KEYS)
    params: dict[str, Any] = {}
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        params |= {g: c for g, c in hydra.runtime.choices.items() if g in HPARAM_GROUPS and c}
        for override in hydra.overrides.task:
            key = override.partition("=")[0].lstrip("+~")
            if "." in key and key not in keys and not key.startswith(("paths.", "hydra.")):
                keys.append(key)
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None:
            params[key] = _typed(value)
    return params


def log_run_hparams(trainer, cfg: DictConfig, metrics: dict) -> None:
    """Write the finished run's HParams (``run_hparams``) with its final figures to each
    TensorBoard logger. Only figures the run produced are given: a run that failed writes
    nothing, and a missing figure is left out rather than shown as 0."""
    final = {
        name: float(metrics[key])
        for key, name in HPARAM_METRICS.items()
        if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key])
    }
    if not final:
        return
    params = run_hparams(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, final, step=trainer.global_step)


def write_sweep_experiment(sweep_dir: Path, swept: list[str]) -> None:
    """The HParams experiment of a finished sweep, in ``<sweep dir>/tensorboard``: its columns
    (the swept keys marked as differing, which HPARAMS sorts first and shows by default, then
    the main settings) and the final figures, with their types from the first job's config."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    from vaelab.lit.loggers import SummaryWriter

    events = sweep_dir / "tensorboard"
    configs = sorted(sweep_dir.glob("*/.hydra/config.yaml"))
    if not events.is_dir() or not configs:
        return
    cfg = OmegaConf.load(configs[0])
    choices = OmegaConf.load(configs[0].parent / "hydra.yaml").hydra.runtime.choices
    values = {g: c for g, c in choices.items() if g in HPARAM_GROUPS and c}
    for key in [*swept, *HPARAM_KEYS]:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None:
            values[key] = _typed(value)
    experiment, _, _ = hparams(values, dict.fromkeys(HPARAM_METRICS.values(), 0.0))
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in swept
    content.content = data.SerializeToString()
    with SummaryWriter(str(events)) as writer:
        writer._get_file_writer().add_summary(experiment)
