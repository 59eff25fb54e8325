"""Checks of a ``train.py`` command line before Hydra starts: Hydra creates the run dir and
writes ``.hydra/`` into it before the task runs, so a command refused only then would leave
an empty run dir behind, or overwrite the record of the run whose dir it was pointed at.

``check_command`` composes the config the command asks for with Hydra's compose API, then
refuses in one line (a ``VaelabError``):

- an override of a key the config does not have (``model.latnt_dim=4``), naming the closest
  keys (Hydra's own answer is a multi-line struct error with exit status 1);
- an option a group does not have (``model=vaee``), naming the closest and listing them;
- for eval.py and sample.py, any override of the model (``+model.flow_steps=2``): they take
  the model from the checkpoint;
- a bad value (``vaelab.runs.config_checks``) of a single run;
- a new run into a run dir that holds checkpoints (``hydra.run.dir=<an earlier run>``): a
  run never continues another's checkpoints unless asked with ``resume=``.

Other composition errors (a syntax error) are left to Hydra, which reports them before it
creates any dir.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import VaelabError
from vaelab.runs.run_dirs import CHECKPOINT_DIR, run_dir_of

MULTIRUN_FLAGS = ("-m", "--multirun")
_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")
_NO_OPTION = re.compile(r"Could not find '([^'/]+)/([^']+)'")
# the scripts that take their model from a checkpoint: its architecture is not theirs to change
FROM_CHECKPOINT = {"eval": "eval.py", "sample": "sample.py"}


def _first_values(args: list[str]) -> list[str]:
    """The overrides of one job of a multirun: each sweep (``a=1,2``, ``range(..)``) at its
    first value; sweeps without listed values (``interval(..)``) are left out."""
    parser = OverridesParser.create()
    first = []
    for arg in args:
        override = parser.parse_override(arg)
        if not override.is_sweep_override():
            first.append(arg)
            continue
        try:
            value = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - interval and other sweeps without listed values
            continue
        first.append(f"{arg.split('=', 1)[0]}={value}")
    return first


def _keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a config (dict and list entries by name, lists as leaves)."""
    keys = []
    for key, child in node.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(child, dict):
            keys += _keys(child, f"{path}.")
    return keys


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="train"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def unknown_key_error(
    config_dir: Path, config_name: str, overrides: list[str], key: str, given: list[str]
) -> VaelabError:
    """The one-line error for an override of ``key``, which the config does not have:
    ``overrides`` are composed without it to find the closest keys; ``given`` are the
    arguments as typed."""
    shown = next((o for o in given if _key(o) == key), key)
    rest = [o for o in overrides if _key(o) != key]
    try:
        tree = OmegaConf.to_container(_compose(config_dir, config_name, rest), resolve=False)
    except ConfigCompositionException:
        tree = {}
    if not key.startswith("hydra"):
        tree.pop("hydra", None)
    close = difflib.get_close_matches(key, _keys(tree), n=3, cutoff=0.8)
    script = {"eval": "eval.py", "sample": "sample.py"}.get(config_name, "train.py")
    hint = f"did you mean {' or '.join(close)}?" if close else f"python {script} --help lists them"
    return VaelabError(f"{shown}: the config has no key {key}; {hint}")


def unknown_option_error(config_dir: Path, group: str, option: str, given: list[str]):
    """The one-line error for ``group=option`` where configs/<group>/ has no such option."""
    shown = next((o for o in given if _key(o) == group), f"{group}={option}")
    options = sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else ""
    return VaelabError(
        f"{shown}: the group {group} has no option {option}; {hint}its options: "
        f"{', '.join(options)}"
    )


def model_override_error(script: str, given: list[str]) -> VaelabError | None:
    """For eval.py and sample.py: the first override of the model's keys, refused (the model
    and its architecture come from the checkpoint; Hydra would ignore ``+model.x`` silently
    or refuse ``model.x`` in several lines)."""
    for arg in given:
        key = _key(arg)
        if key == "model" or key.startswith("model."):
            return VaelabError(
                f"{arg}: {script} takes the model, its architecture included, from ckpt_path; "
                f"drop it, or train that model with python train.py {arg.lstrip('+~')}"
            )
    return None


def _continues(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether the command continues the run in ``run_dir`` (resume=, or a checkpoint of it)."""
    if cfg.get("resume") is not None:
        return True
    chosen = cfg.get("ckpt_path")
    return chosen is not None and run_dir_of(chosen) == run_dir.resolve()


def check_command(argv: list[str], config_dir: Path, config_name: str = "train") -> None:
    """Raise one ``VaelabError`` when ``argv`` (a ``train.py`` command line, after
    ``resume_argv``; or of eval.py or sample.py, ``config_name`` eval or sample) would be
    refused; return when Hydra should run it. Command lines with Hydra's flags (``--help``,
    ``--cfg``, ...) and the extra DDP ranks Lightning starts are left to Hydra."""
    args = argv[1:]
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return
    if os.environ.get("LOCAL_RANK", "0") != "0":  # an extra rank of a DDP run
        return
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    given = [a for a in args if a not in MULTIRUN_FLAGS]
    if config_name in FROM_CHECKPOINT and (
        err := model_override_error(FROM_CHECKPOINT[config_name], given)
    ):
        raise err
    try:
        overrides = _first_values(given) if multirun else given
        cfg = _compose(config_dir, config_name, overrides)
    except ConfigCompositionException as err:
        text = f"{err} {err.__cause__ or ''}"
        if "is not in struct" in text and (match := _NOT_IN_STRUCT.search(text)):
            key = match.group(1)
            raise unknown_key_error(config_dir, config_name, overrides, key, given) from None
        if match := _NO_OPTION.search(text):
            raise unknown_option_error(config_dir, *match.groups(), given) from None
        return  # Hydra says what is wrong, before it creates a dir
    except Exception:  # noqa: BLE001 - anything else: Hydra's own report
        return
    if multirun or "MULTIRUN" in str(OmegaConf.select(cfg, "hydra.mode", default="")):
        return  # a job with a bad value fails alone, listed in the sweep's summary
    if config_name != "train":
        return
    from vaelab.runs.config_checks import check_config  # (imports the configured classes)

    check_config(cfg)
    try:
        run_dir = Path(str(cfg.hydra.run.dir)).expanduser()
    except Exception:  # noqa: BLE001 - a run dir that only Hydra can resolve
        return
    refuse_new_run_into(run_dir, cfg)


def refuse_new_run_into(run_dir: Path, cfg: DictConfig) -> None:
    """Raise when ``cfg`` starts a new run in ``run_dir`` and that dir holds checkpoints."""
    if any((run_dir / CHECKPOINT_DIR).glob("*.ckpt")) and not _continues(cfg, run_dir):
        raise VaelabError(
            f"hydra.run.dir={run_dir} holds the checkpoints of an earlier run, and a new "
            f"run never reuses them: continue that run with resume={run_dir}, or give the "
            "new run another hydra.run.dir= (or none: a new dir is made)"
        )
