"""Finding, reading and vetting checkpoints before a run uses them.

Checkpoints are always read with ``torch.load(weights_only=True)``: tensors and plain
containers only, so a checkpoint can never run code when it is loaded.
"""

from __future__ import annotations

import inspect
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import VaelabError
from vaelab.lit.checkpoint_io import remove_stale_temporaries
from vaelab.lit.module import DEFAULT_NET, VAELitModule, build_net_for_shapes, module_arguments
from vaelab.runs.run_dirs import CHECKPOINT_DIR, run_dir_of

log = logging.getLogger(__name__)


# VAELitModule's own arguments; the others are the network's (``net`` and its arguments)
MODULE_ARGUMENTS = frozenset(module_arguments(VAELitModule))
DEFAULT_MODULE = "vaelab.lit.module.VAELitModule"


def module_class(checkpoint: Mapping[str, Any], key: str, path: str | Path) -> type:
    """The LightningModule class a checkpoint was saved from (``VAELitModule`` for one that
    does not say), or one VaelabError naming it when it cannot be imported."""
    target = checkpoint.get("module_class", DEFAULT_MODULE)
    try:
        cls = get_object(target)
    except Exception as err:  # noqa: BLE001 - any import failure: the same advice
        raise VaelabError(
            f"{key}={path} was saved from {target}, which cannot be imported here "
            f"({error_reason(err)}); run where its package is installed"
        ) from None
    return cls


def own_arguments(cls: type) -> frozenset[str]:
    """The arguments of LightningModule class ``cls`` that are not its network's."""
    found = module_arguments(cls)
    return frozenset(MODULE_ARGUMENTS if found is None else found)


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint dict at ``path``, or one clear VaelabError naming ``key=path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VaelabError(
            f"{key}={path}: no such file; pass a .ckpt file written by train.py "
            "(<run_dir>/checkpoints/*.ckpt), or resume=<run_dir> to pick a run's newest one"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # weights_only refused to import a class or function
            raise VaelabError(
                f"{key}={path}: the file holds Python objects other than tensors and plain "
                "containers, and loading it could run arbitrary code, so it is refused; use a "
                "checkpoint written by train.py"
            ) from None
        raise _not_a_checkpoint(key, path, err) from None
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on foreign files
        raise _not_a_checkpoint(key, path, err) from None
    if not isinstance(checkpoint, Mapping) or not {"state_dict", "hyper_parameters"} <= set(
        checkpoint
    ):
        raise VaelabError(
            f"{key}={path}: a PyTorch file, but not a checkpoint written by train.py (it has no "
            "state_dict and hyper_parameters); pass a .ckpt file from <run_dir>/checkpoints/"
        )
    return dict(checkpoint)


def error_reason(err: Exception, limit: int = 120) -> str:
    """An exception as one short line for an error message: its type and text."""
    return " ".join(f"{type(err).__name__} {err}".split())[:limit]


def _not_a_checkpoint(key: str, path: Path, err: Exception) -> VaelabError:
    reason = error_reason(err)
    return VaelabError(
        f"{key}={path}: not a PyTorch checkpoint, or truncated ({reason}); pass a .ckpt file "
        "written by train.py (<run_dir>/checkpoints/*.ckpt)"
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


_ABSENT = object()


def _defaults(target: str) -> dict[str, Any]:
    """The default values of the arguments of the network class ``target`` and of the base
    classes it passes its other arguments to; {} when it cannot be imported."""
    try:
        cls = get_object(target)
    except Exception:  # noqa: BLE001 - the shape check reports an unknown class
        return {}
    out: dict[str, Any] = {}
    for owner in reversed([c for c in cls.__mro__[:-1] if "__init__" in vars(c)]):
        try:
            params = inspect.signature(owner.__init__).parameters.values()
        except (TypeError, ValueError):
            continue
        out |= {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return out


def net_shapes(net_args: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The parameter and buffer shapes of the network that ``net_args`` (``net`` and its
    arguments) builds, built on the meta device (no memory, no initialisation cost)."""
    args = dict(net_args)
    target = args.pop("net", DEFAULT_NET)
    net = build_net_for_shapes(target, args)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_architecture(
    checkpoint: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    path: str | Path,
    key: str = "ckpt_path",
) -> None:
    """Raise when the config's model would not fit the checkpoint's weights, naming every
    argument whose value changes a weight's shape (found by building the network of each
    change on the meta device, so any variant's arguments are covered); log the other
    hyperparameters that differ (beta, likelihood, ...: they load but change the objective)."""
    saved = checkpoint["hyper_parameters"]
    own = own_arguments(module_class(checkpoint, key, path))
    differ = {
        name: (_plain(model_cfg[name]), _plain(saved[name]))
        for name in saved
        if name in model_cfg
        and _plain(model_cfg[name]) != _plain(saved[name])
        and model_cfg[name] != "auto"  # (onednn_linear=auto: the checkpoint keeps its choice)
    }
    # arguments the checkpoint's network took at their defaults
    defaults = _defaults(saved.get("net", DEFAULT_NET))
    differ |= {
        key: (_plain(value), _plain(defaults.get(key, "its default")))
        for key, value in model_cfg.items()
        if key not in saved
        and not key.startswith("_")
        and key not in own
        and _plain(value) != _plain(defaults.get(key, _ABSENT))
    }
    saved_net = {k: _plain(v) for k, v in saved.items() if k not in own}
    weights = {
        k.removeprefix("net."): tuple(v.shape)
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("net.")
    }
    shapes = []
    for name in (k for k in differ if k not in own):
        try:
            if net_shapes({**saved_net, name: differ[name][0]}) != weights:
                shapes.append(name)
        except (VaelabError, TypeError, ValueError):
            shapes.append(name)  # the checkpoint's network cannot take this value at all
    if shapes:
        pairs = ", ".join(
            f"model.{k}={differ[k][0]} but the checkpoint has {differ[k][1]}" for k in shapes
        )
        how = (
            "resume= continues the run with its own model"
            if key == "resume"
            else "resume=<run_dir> reuses the run's own"
        )
        raise VaelabError(
            f"{key}={path} holds another architecture: {pairs}; drop those overrides "
            f"({how}) or train a new model without {key}"
        )
    for name, (now, before) in differ.items():
        log.warning(
            "Resuming with model.%s=%s (the checkpoint was trained with %s)", name, now, before
        )


def last_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The most recently written ``.ckpt`` of ``<run_dir>/checkpoints`` that loads (after an
    interruption, the one saved at the interruption; else ``last.ckpt``), and its contents.
    One that does not load (a truncated file) is reported in one line and left in place, and
    the next newest is taken; only when none loads does it stop, with one line."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise VaelabError(
            f"resume={run_dir}: no such run dir; pass a folder of logs/train/runs/ (or a "
            "job folder of a multirun)"
        )
    candidates = sorted(
        (run_dir / CHECKPOINT_DIR).glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name)
    )
    if not candidates:
        raise VaelabError(
            f"resume={run_dir}: the run has no checkpoints in {run_dir / CHECKPOINT_DIR} "
            "(it stopped before its first epoch ended, or ran with callbacks=none); start it again"
        )
    for path in reversed(candidates):
        try:
            return path, read_checkpoint(path, "resume")
        except VaelabError as err:
            reason = str(err).split(": ", 1)[-1].split("; ")[0]
            log.warning("resume: %s does not load (%s); taking the next newest", path, reason)
    raise VaelabError(
        f"resume={run_dir}: none of its {len(candidates)} checkpoints loads (each reported "
        "above); start the run again"
    )


def checkpoint_to_resume(cfg: Mapping[str, Any]) -> Path | None:
    """The checkpoint a run continues from (``ckpt_path``, or the newest of ``resume``'s run
    dir), read and checked against the config's model; None for a fresh run. Continuing in
    its run dir, the temporary files of checkpoint writes killed before are removed."""
    resume, chosen = cfg.get("resume"), cfg.get("ckpt_path")
    if resume is not None and not Path(resume).expanduser().is_file():
        path, checkpoint = last_checkpoint(resume)  # read while choosing it
    elif resume is not None or chosen is not None:
        key = "resume" if resume is not None else "ckpt_path"
        path = Path(resume if resume is not None else chosen).expanduser()
        checkpoint = read_checkpoint(path, key)
    else:
        return None
    model = cfg["model"]
    if isinstance(model, DictConfig):
        model = OmegaConf.to_container(model, resolve=True)
    if resume is not None:
        check_architecture(checkpoint, model, resume, "resume")
    else:
        check_architecture(checkpoint, model, path)
    if run_dir_of(path) is not None:
        remove_stale_temporaries(path.parent)
    log.info("Continuing from %s (global step %s)", path, checkpoint.get("global_step"))
    return path
