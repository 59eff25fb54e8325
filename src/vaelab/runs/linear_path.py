"""``model.onednn_linear=auto``: the linear path for the machine, decided when the model is
built from a config (``vaelab.runs.train.build``).

On the CPU, in fp32, neither torch's ``nn.Linear`` (MKL) nor oneDNN's linear
(``vaelab.science.fast_linear``) is the faster one everywhere: oneDNN wins on AMD processors
with AVX-512, MKL on Intel's. ``auto`` times both on the model's own layer sizes at the
run's batch size (``choose_onednn_linear``: well under a second, cached per machine) and
builds the model with the faster; ``true`` and ``false`` force either. Off the CPU, under
mixed precision or ``torch.compile`` the layers take ``nn.Linear``'s path whatever the
setting, so ``auto`` means ``false`` there, without a probe. The choice goes to the run's
log file (``train.log``) in one line, and the checkpoint keeps the resolved value.
"""

from __future__ import annotations

import logging

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from vaelab.lit.module import DEFAULT_NET, VAELitModule, build_net_for_shapes, module_arguments
from vaelab.science.fast_linear import choose_onednn_linear, linear_shapes

log = logging.getLogger(__name__)

VALUES = (True, False, "auto")


def runs_on_cpu(trainer_cfg: DictConfig) -> bool:
    """Whether the Trainer of ``trainer_cfg`` trains on the CPU."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return accelerator == "cpu"


def several_processes(trainer_cfg: DictConfig) -> bool:
    """Whether the Trainer of ``trainer_cfg`` runs more than one process (DDP)."""
    devices = trainer_cfg.get("devices", 1)
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    many = devices not in (1, "1", None) and not (isinstance(devices, list) and len(devices) == 1)
    return many or nodes > 1 or "ddp" in str(trainer_cfg.get("strategy", "")).lower()


def resolve_onednn_linear(cfg: DictConfig) -> dict:
    """``{"onednn_linear": bool}`` to build ``cfg.model`` with when it says ``auto``, else
    ``{}``; logs the choice to the log file."""
    model = cfg.model
    if model.get("onednn_linear") != "auto":
        return {}
    trainer = cfg.get("trainer") or DictConfig({})
    if not runs_on_cpu(trainer):
        choice, why = False, "nn.Linear (not on the CPU: no oneDNN path)"
    elif "mixed" in str(trainer.get("precision", "32-true")):
        choice, why = False, "nn.Linear (mixed precision: the layers run under autocast)"
    elif model.get("compile", False):
        choice, why = False, "nn.Linear (torch.compile: compiled graphs use nn.Linear's path)"
    elif several_processes(trainer):
        # each rank would time its own probe, at the same moment on the same cores: the ranks
        # could choose differently; the same model everywhere, without a probe
        choice, why = False, "nn.Linear (several processes: no per-rank probe)"
    else:
        batch_size = int(cfg.get("data", {}).get("batch_size", 128))
        choice, why = choose_onednn_linear(model_linear_shapes(model), batch_size)
        why = f"{why}, batch {batch_size}, {torch.get_num_threads()} threads"
    log_to_file(f"model.onednn_linear=auto: {why}")
    return {"onednn_linear": choice}


def model_linear_shapes(model: DictConfig) -> list[tuple[int, int]]:
    """The (in, out) sizes of the linear layers of the network ``model`` describes, from a
    copy built on the meta device (no memory, no random draws), or on the CPU where its
    constructor cannot run on the meta device."""
    own = own_keys(model)
    arguments = {
        k: v
        for k, v in OmegaConf.to_container(model, resolve=True).items()
        if k not in own and not k.startswith("_")
    }
    arguments["onednn_linear"] = False
    return linear_shapes(build_net_for_shapes(model.get("net", DEFAULT_NET), arguments))


def own_keys(model: DictConfig) -> frozenset[str]:
    """The keys of ``model`` that its ``_target_`` (``VAELitModule`` or a subclass) keeps for
    itself rather than passing on to the network."""
    cls = VAELitModule
    if model.get("_target_"):
        found = get_object(model._target_)
        if isinstance(found, type) and issubclass(found, VAELitModule):
            cls = found
    return frozenset((module_arguments(cls) or module_arguments(VAELitModule)) + ("net",))


def log_to_file(message: str) -> None:
    """``message`` as an INFO record to the root logger's file handlers only (the run's
    ``train.log`` under Hydra): a detail for the record, not for the terminal. With no log
    file, a DEBUG record."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        log.debug(message)
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)
