"""Resuming a run in its own run dir: the command line that does it, and the one to print.

``python train.py resume=<run_dir>`` (or ``ckpt_path=<run_dir>/checkpoints/<file>.ckpt``) is
rewritten before Hydra composes the config: the run's own overrides are put in front (so the
model, data and paths are the run's, and arguments given now still win), Hydra's run dir
becomes ``<run_dir>`` (so checkpoints, TensorBoard and metrics.json continue there), and
Hydra's record of this invocation goes to ``<run_dir>/.hydra/resume-NNN/`` (so the original
``.hydra/`` files are kept). Hand-written because Hydra has no notion of resuming a run.

A sweep is continued by running it again in its sweep dir: ``python train.py -m <the same
arguments> hydra.sweep.dir=<sweep_dir>``, or ``python train.py resume=<sweep_dir>``, which is
rewritten to that command from the sweep's ``multirun.yaml``. Each job then skips, resumes or
runs itself (``vaelab.runs.sweep.continue_job``); here it is only checked that the arguments
are the sweep's, so that job N is the same job as before.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from vaelab.errors import VaelabError
from vaelab.runs.run_dirs import run_dir_of

RESUME_KEYS = ("resume", "ckpt_path")
SWEEP_RECORD = "multirun.yaml"  # what Hydra writes into every sweep dir
MULTIRUN_FLAGS = ("-m", "--multirun")
_HYDRA_SAFE = re.compile(r"[\w./\-~:+@]+")


def hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value (quoted when it has characters Hydra parses)."""
    if _HYDRA_SAFE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override: str) -> str | None:
    """The key (or group) an override sets, without its +/++/~ prefix; None for flags."""
    if override.startswith("-") or "=" not in override:
        return None
    return override.split("=", 1)[0].lstrip("+~")


def saved_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was last started with (from its newest ``.hydra`` record),
    without resume/ckpt_path."""
    records = sorted((run_dir / ".hydra").glob("resume-*/overrides.yaml"))
    record = records[-1] if records else run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(record.read_text()) if record.is_file() else []
    return [o for o in overrides or [] if _key(o) not in RESUME_KEYS]


def resume_target(args: list[str]) -> tuple[str, Path] | None:
    """(key, path) of the resume= or ckpt_path= argument, if one is given and not null."""
    parser = OverridesParser.create()
    for arg in args:
        if _key(arg) in RESUME_KEYS:
            override = parser.parse_override(arg)
            value = override.value()
            if value is not None:
                return override.key_or_group, Path(str(value)).expanduser()
    return None


def _is_hydra(override: str) -> bool:
    key = _key(override) or ""
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def task_overrides(args: list[str]) -> list[str]:
    """The overrides of ``args`` that configure the task (not Hydra, not resume=/ckpt_path=),
    in their order: what Hydra records as a sweep's ``hydra.overrides.task``."""
    return [
        a for a in args if _key(a) is not None and not _is_hydra(a) and _key(a) not in RESUME_KEYS
    ]


def saved_sweep(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """The task and Hydra overrides a sweep was started with (its ``multirun.yaml``)."""
    record = yaml.safe_load((sweep_dir / SWEEP_RECORD).read_text()) or {}
    overrides = (record.get("hydra") or {}).get("overrides") or {}
    return list(overrides.get("task") or []), list(overrides.get("hydra") or [])


def sweep_argv(argv: list[str], sweep_dir: Path) -> list[str]:
    """``python train.py resume=<sweep_dir>`` as the command that continues the sweep: its
    arguments and Hydra settings (the launcher, ...) from its ``multirun.yaml``, ``-m`` and
    ``hydra.sweep.dir=<sweep_dir>``; Hydra settings given now win (a task argument given now
    would change the sweep, and is refused by ``check_sweep_dir``)."""
    task, hydra = saved_sweep(sweep_dir)
    rest = [a for a in argv[1:] if _key(a) not in RESUME_KEYS and a not in MULTIRUN_FLAGS]
    given = {_key(a) for a in rest}
    kept = [o for o in hydra if _key(o) not in {*given, "hydra.sweep.dir", "hydra.mode"}]
    new = [argv[0], "-m", *task, *kept, *rest]
    return [*new, f"hydra.sweep.dir={hydra_quote(str(sweep_dir.resolve()))}"]


def check_sweep_dir(argv: list[str]) -> None:
    """A multirun given the ``hydra.sweep.dir`` of an earlier sweep continues it, so its
    arguments must be the earlier sweep's (job N is then the same job); else one error."""
    given = [a for a in argv[1:] if _key(a) == "hydra.sweep.dir"]
    if not given:
        return
    value = OverridesParser.create().parse_override(given[-1]).value()
    sweep_dir = Path(str(value)).expanduser()
    if not (sweep_dir / SWEEP_RECORD).is_file():
        return
    before, now = saved_sweep(sweep_dir)[0], task_overrides(argv[1:])
    if now != before:
        raise VaelabError(
            f"hydra.sweep.dir={sweep_dir} holds a sweep of other arguments, so its job numbers "
            f"would mean other jobs (it ran with: {' '.join(before) or 'none'}; now: "
            f"{' '.join(now) or 'none'}); continue it with its own arguments (python train.py "
            f"resume={hydra_quote(str(sweep_dir))}), or give a new hydra.sweep.dir"
        )


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` rewritten to continue the run that resume=/ckpt_path= points into, or the
    sweep of resume=<sweep_dir>; unchanged when neither is given or the checkpoint lies
    outside a run dir (a new run starts). A sweep dir given to a multirun is checked."""
    argv = _resume_argv(argv)
    check_sweep_dir(argv)
    return argv


def _resume_argv(argv: list[str]) -> list[str]:
    target = resume_target(argv[1:])
    if target is None:
        return argv
    key, path = target
    if key == "resume" and (path / SWEEP_RECORD).is_file():
        return sweep_argv(argv, path)
    if any(arg in MULTIRUN_FLAGS for arg in argv[1:]):
        raise VaelabError(
            f"{key}= continues one run; drop -m/--multirun (to continue a sweep, pass its "
            "folder: resume=<sweep_dir>)"
        )
    if key == "resume":
        if not path.exists():
            raise VaelabError(f"resume={path}: no such run dir; pass a folder of logs/train/runs/")
        run_dir = run_dir_of(path) if path.is_file() else path.resolve()
    elif not path.is_file():
        raise VaelabError(
            f"ckpt_path={path}: no such file; pass a .ckpt file written by train.py "
            "(<run_dir>/checkpoints/*.ckpt), or resume=<run_dir>"
        )
    else:
        run_dir = run_dir_of(path)
    if run_dir is None:
        return argv
    given = {_key(arg) for arg in argv[1:]}
    kept = [o for o in saved_overrides(run_dir) if _key(o) not in given]
    number = len(list((run_dir / ".hydra").glob("resume-*"))) + 1
    return [
        argv[0],
        *kept,
        *argv[1:],
        f"hydra.run.dir={hydra_quote(str(run_dir))}",
        f"hydra.output_subdir=.hydra/resume-{number:03d}",
    ]


def _continued_job(run_dir: Path) -> str | None:
    """For a job of a multirun started again in its dir: 'finished' (its metrics.json is
    there: ``continue_job`` skips it), 'stopped' (it left checkpoints: it continues from them)
    or None (a new job, or one that failed before its first checkpoint)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    if (run_dir / "metrics.json").is_file():
        return "finished"
    if any((run_dir / "checkpoints").glob("*.ckpt")):
        return "stopped"
    return None


def job_record(output_dir: str) -> str | None:
    """``hydra.output_subdir`` of a run (``${vaelab_job_record:<run dir>}``): where Hydra
    writes its record of this invocation. ``.hydra``, except for a job of a sweep run again
    in its dir: none for a finished job (it is skipped, its ``.hydra/`` is left as it ran)
    and ``.hydra/resume-NNN`` for one that continues from its checkpoints, as
    ``resume=<run_dir>`` gives a single run."""
    run_dir = Path(output_dir)
    state = _continued_job(run_dir)
    if state == "finished":
        return None
    if state == "stopped":
        return f".hydra/resume-{len(list((run_dir / '.hydra').glob('resume-*'))) + 1:03d}"
    return ".hydra"


def job_log(output_dir: str, job_name: str) -> str:
    """The log file of a run (``${vaelab_job_log:<run dir>,<job name>}``): ``<job name>.log``
    in its dir, which a continued run appends to; none (the null device) for a finished job
    of a sweep run again, whose files are left as they were."""
    if _continued_job(Path(output_dir)) == "finished":
        return os.devnull
    return str(Path(output_dir) / f"{job_name}.log")


def discard_refused_run(run_dir: Path, record: str | None) -> None:
    """Undo what Hydra wrote for a command refused before it trained: this invocation's
    record of a continued run (``.hydra/resume-NNN``), or a new run dir that holds nothing
    but ``.hydra/`` and the log."""
    if record and Path(record) != Path(".hydra") and (run_dir / record).is_dir():
        shutil.rmtree(run_dir / record)
    elif run_dir.is_dir() and all(
        p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()
    ):
        shutil.rmtree(run_dir)


def resume_command(run_dir: str | Path, script: str | None = None) -> str:
    """The shell command that continues the run in ``run_dir``."""
    script = script or sys.argv[0] or "train.py"
    python = "python" if shutil.which("python") == sys.executable else sys.executable
    argument = f"resume={hydra_quote(str(run_dir))}"
    return " ".join(shlex.quote(part) for part in (python, script, argument))
