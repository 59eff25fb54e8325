"""TensorBoard as the place to compare runs: where a run's events go (a sweep's jobs side by
side, named by their swept values), and the HParams record of every finished run."""

from __future__ import annotations

import io
import json
import math
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from vaelab.errors import writing

# the settings every run records in HParams besides every key of its model (and what its
# command line set)
HPARAM_KEYS = (
    "data.dataset",
    "data.batch_size",
    "data.binarize",
    "trainer.max_epochs",
    "trainer.precision",
    "trainer.gradient_clip_val",
    "seed",
)
HPARAM_GROUPS = ("model", "kl", "data", "trainer", "experiment")
# the settings of the test NLL (metrics.json keys): HParams, not scalars
NLL_SETTINGS = ("test/nll_k", "test/nll_images", "test/nll_normalized")
# the sweep's HParams experiment: a fixed name, first in its folder, rewritten in place
EXPERIMENT_FILE = "events.out.tfevents.0000000000.sweep-experiment"
# a finished run's final figures (metrics.json keys) and their HParams names
HPARAM_METRICS = {
    "val/loss": "val/loss_best",
    "test/loss": "test/loss",
    "test/recon": "test/recon",
    "test/kl": "test/kl",
    "test/nll": "test/nll",
    "test/active_units": "test/active_units",
}


def _sweep_record(sweep_dir: Path) -> dict:
    return (yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}).get("hydra") or {}


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys a multirun varies: its sweep overrides (``model.latent_dim=2,8``) and the
    sweeper's ``params``, read from the ``multirun.yaml`` Hydra writes in the sweep dir."""
    hydra = _sweep_record(sweep_dir)
    keys = list(sweep_values(sweep_dir))
    return keys + [k for k in (hydra.get("sweeper") or {}).get("params") or {} if k not in keys]


def sweep_values(sweep_dir: Path) -> dict[str, list[str]]:
    """Each swept key of the sweep's command line with its values as written (``range`` and
    lists expanded; an ``interval`` of a search sweeper has none)."""
    parser = OverridesParser.create()
    values: dict[str, list[str]] = {}
    for override in parser.parse_overrides(
        (_sweep_record(sweep_dir).get("overrides") or {}).get("task") or []
    ):
        if override.is_sweep_override():
            try:
                values[override.key_or_group] = list(override.sweep_string_iterator())
            except Exception:  # noqa: BLE001 - a sweep without listed values
                values[override.key_or_group] = []
    return values


def sortable_texts(values: list[str]) -> dict[str, str]:
    """Each of a sweep's values of one key as text whose alphabetical order is its numeric
    order (TensorBoard lists runs by name): non-negative numbers in plain notation with the
    integer part zero-padded to the widest (``2, 8, 16`` -> ``02, 08, 16``; ``1e-4`` ->
    ``0.0001``); flat lists element by element (``[8,4], [16,8]`` -> ``[08,4], [16,8]``);
    other values as written."""
    inner = [v.strip()[1:-1] for v in values if v.strip().startswith("[") and v.endswith("]")]
    if values and len(inner) == len(values) and not any("[" in i for i in inner):
        items = [[e.strip() for e in i.split(",")] if i.strip() else [] for i in inner]
        columns = [
            sortable_texts([i[k] for i in items if len(i) > k]) for k in range(max(map(len, items)))
        ]
        return {
            v: "[" + ",".join(columns[k][e] for k, e in enumerate(i)) + "]"
            for v, i in zip(values, items, strict=True)
        }
    try:
        numbers = [Decimal(v) for v in values]
    except (InvalidOperation, ValueError):
        return {v: v for v in values}
    if not numbers or any(not n.is_finite() or n < 0 for n in numbers):
        return {v: v for v in values}
    plain = [
        v if "e" not in v.lower() else format(n, "f") for v, n in zip(values, numbers, strict=True)
    ]
    width = max(len(p.split(".")[0]) for p in plain)
    return {v: "0" * (width - len(p.split(".")[0])) + p for v, p in zip(values, plain, strict=True)}


def job_name(overrides: list[str], keys: list[str], values: dict | None = None) -> str:
    """``latent_dim=08,beta=4``: a job's values of the swept ``keys`` (each by the last part
    of its name; numbers made sortable among the sweep's ``values``), as a file name."""
    values = values or {}
    chosen = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in keys:
            chosen[key.lstrip("+~")] = value
    parts = [
        f"{k.rsplit('.', 1)[-1]}={sortable_texts(values.get(k, [])).get(chosen[k], chosen[k])}"
        for k in keys
        if k in chosen
    ]
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
    overrides = list(HydraConfig.get().overrides.task)
    name = job_name(overrides, swept_keys(sweep_dir), sweep_values(sweep_dir))
    return str(sweep_dir / "tensorboard" / (name or run_dir.name))


def _typed(value: Any, width: int = 0) -> bool | float | str:
    """A value as HParams shows it: booleans and floats as they are, integers as text
    right-aligned with spaces to ``width`` (HParams prints every number with 5 digits,
    ``16.000``; text of equal width sorts in numeric order in its table and axes, and the
    page does not show the leading spaces), anything else as text."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).rjust(width)
    if isinstance(value, (bool, float, str)):
        return value
    return "null" if value is None else str(value).replace(" ", "")


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, child in node.items():
            if not str(key).startswith("_"):
                out |= _leaves(child, f"{prefix}.{key}")
        return out
    return {prefix: node}


def hparams_of(
    cfg: DictConfig, choices: dict, task: list[str], widths: dict[str, int] | None = None
) -> dict[str, bool | float | str]:
    """A run's hyperparameters, flat and typed: the chosen config groups, every key of its
    model (so a variant's own arguments are there), ``HPARAM_KEYS`` and every key its command
    line (``task``) set; integers of ``widths``'s keys right-aligned to that width."""
    widths = widths or {}
    params: dict[str, Any] = {g: c for g, c in choices.items() if g in HPARAM_GROUPS and c}
    model = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
    values = _leaves(model, "model")
    keys = list(HPARAM_KEYS)
    for override in task:
        key = override.partition("=")[0].lstrip("+~")
        if "." in key and key not in keys and not key.startswith(("paths.", "hydra.")):
            keys.append(key)
    for key in keys:
        if key not in values:
            values[key] = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    for key, value in values.items():
        if value is not None:
            params[key] = _typed(value, widths.get(key, 0))
    return params


def _sweep_widths(sweep_dir: Path) -> dict[str, int]:
    """The widest integer value of each swept key (of the values the command line lists)."""
    widths = {}
    for key, values in sweep_values(sweep_dir).items():
        if values and all(v.lstrip("-").isdigit() for v in values):
            widths[key] = max(len(str(int(v))) for v in values)
    return widths


def run_hparams(cfg: DictConfig) -> dict[str, bool | float | str]:
    """The hyperparameters of the running Hydra job (``hparams_of``)."""
    if not HydraConfig.initialized():
        return hparams_of(cfg, {}, [])
    hydra = HydraConfig.get()
    sweep_dir = Path(cfg.paths.output_dir).parent
    in_sweep = (sweep_dir / "multirun.yaml").is_file()
    widths = _sweep_widths(sweep_dir) if in_sweep else {}
    return hparams_of(cfg, dict(hydra.runtime.choices), list(hydra.overrides.task), widths)


def log_run_hparams(trainer, cfg: DictConfig, metrics: dict) -> None:
    """Write the finished run's HParams (``run_hparams`` and the settings of its test NLL)
    with its final figures to each TensorBoard logger. Only figures the run produced are
    given: a run that failed writes nothing, and a missing figure is left out rather than
    shown as 0."""
    final = {
        name: float(metrics[key])
        for key, name in HPARAM_METRICS.items()
        if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key])
    }
    if not final:
        return
    params = run_hparams(cfg) | {k: _typed(metrics[k]) for k in NLL_SETTINGS if k in metrics}
    experiment, start, end = hparams_summaries(params, final)
    # a job of a sweep writes no experiment of its own: TensorBoard would take any run's as
    # the sweep's (write_sweep_experiment writes that one)
    sweep = HydraConfig.initialized() and (Path(cfg.paths.output_dir).parent / "multirun.yaml")
    summaries = (start, end) if sweep and sweep.is_file() else (experiment, start, end)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # HParams reads its figures from scalars: those the test stage did not log
            new = {k: v for k, v in final.items() if k not in trainer.logged_metrics}
            if new:
                logger.log_metrics(new, step=trainer.global_step)
            writer = logger.experiment._get_file_writer()
            for summary in summaries:
                writer.add_summary(summary, trainer.global_step)


def hparams_summaries(params: dict, metrics: dict, domains: dict | None = None) -> tuple:
    """torch's ``hparams`` summaries (experiment, session start, session end) with booleans
    typed as booleans (torch records them as the numbers 0 and 1)."""
    from tensorboard.plugins.hparams.api_pb2 import DataType
    from torch.utils.tensorboard.summary import hparams

    summaries = hparams(params, metrics, hparam_domain_discrete=domains)
    flags = [k for k, v in params.items() if isinstance(v, bool)]
    experiment, start = summaries[0].value[0].metadata.plugin_data, summaries[1].value[0]
    data = HParamsPluginData.FromString(experiment.content)
    for info in data.experiment.hparam_infos:
        if info.name in flags:
            info.type = DataType.DATA_TYPE_BOOL
    experiment.content = data.SerializeToString()
    data = HParamsPluginData.FromString(start.metadata.plugin_data.content)
    for key in flags:
        data.session_start_info.hparams[key].bool_value = params[key]
    start.metadata.plugin_data.content = data.SerializeToString()
    return summaries


def _job_hparams(job_dir: Path, widths: dict[str, int]) -> dict[str, bool | float | str]:
    """A finished job's HParams, from the config and choices Hydra recorded for it."""
    record = job_dir / ".hydra"
    cfg = OmegaConf.load(record / "config.yaml")
    hydra = OmegaConf.load(record / "hydra.yaml").hydra
    choices = OmegaConf.to_container(hydra.runtime.choices)
    params = hparams_of(cfg, choices, list(hydra.overrides.task), widths)
    metrics = json.loads((job_dir / "metrics.json").read_text())
    return params | {k: _typed(metrics[k]) for k in NLL_SETTINGS if k in metrics}


def write_sweep_experiment(sweep_dir: Path, swept: list[str]) -> Path | None:
    """The HParams experiment of a finished sweep: its columns are what varies between its
    finished jobs (the swept keys, and what they change: a swept group changes its keys)
    and the final figures, so that HPARAMS and its parallel coordinates open on them. Without
    it the plugin would make a column of every setting and every scalar of every run.

    TensorBoard reads it from any run; it goes into the first job's folder (at the sweep's
    ``tensorboard/`` root it would be a run of its own, an empty ``.`` in every run list),
    as ``EXPERIMENT_FILE``, rewritten in place when the sweep is continued. Returns it."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    events = sweep_dir / "tensorboard"
    jobs = sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))
    jobs = [j for j in jobs if (j / "metrics.json").is_file()]
    runs = sorted(p for p in events.iterdir() if p.is_dir()) if events.is_dir() else []
    if not jobs or not runs:
        return None
    widths = _sweep_widths(sweep_dir)
    rows = [_job_hparams(job, widths) for job in jobs]
    keys = sorted({k for row in rows for k in row})
    varying = [
        k for k in keys if len({repr(row.get(k)) for row in rows}) > 1 or k in swept
    ] or swept
    varying = [k for k in [*swept, *varying] if any(k in row for row in rows)]
    varying = list(dict.fromkeys(varying))
    first = {k: next(row[k] for row in rows if k in row) for k in varying}
    domains = {
        k: sorted({row[k] for row in rows if k in row})
        for k in varying
        if isinstance(first[k], str)
    }
    experiment, _, _ = hparams_summaries(
        first, dict.fromkeys(HPARAM_METRICS.values(), 0.0), domains
    )
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = True
    content.content = data.SerializeToString()
    record = io.BytesIO()
    writer = RecordWriter(record)
    for event in (
        Event(wall_time=time.time(), file_version="brain.Event:2"),
        Event(wall_time=time.time(), summary=experiment),
    ):
        writer.write(event.SerializeToString())
    path = runs[0] / EXPERIMENT_FILE
    for old in events.rglob(EXPERIMENT_FILE):
        old.unlink()
    with writing(path, "the sweep's HParams experiment", record.tell()):
        path.write_bytes(record.getvalue())
    return path
