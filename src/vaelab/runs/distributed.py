"""DDP inside a Hydra multirun on one machine (``-m`` sweeps, Optuna searches).

Lightning's DDP launcher starts local ranks 1..N-1 by re-running the command line with
``hydra.run.dir`` set to rank 0's run dir (``_hydra_subprocess_cmd``). That is right for a
single run, but in a multirun the command line is the whole sweep: every extra rank would
start a sweep of its own, in a second sweep dir, and an Optuna search would even give the
ranks different hyperparameters (Lightning issue #15689; the upstream fix, PR #18175, is not
merged). ``rank_command`` starts the extra ranks as a single run of the current job instead:
its own overrides, its own output dir. A job ends when its extra ranks have exited
(``wait_for_extra_ranks``), so two jobs' ranks never overlap nor share the CPU. Before the
next job of the sweep starts its ranks, ``start_extra_ranks_as_this_job`` also clears what the
last job's launch left in this process (its process group, whose other ranks have exited, and
the rank variables Lightning put in ``os.environ``, which would make Lightning think the ranks
are started by someone else).
On SLURM, srun starts the ranks and none of this runs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers import subprocess_script

from vaelab.errors import VaelabError

log = logging.getLogger(__name__)

# set by Lightning's launcher in the launching process (lightning ... subprocess_script.py)
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_launched_ranks = False  # whether this process started ranks for a job of the sweep


def _entry_command() -> list[str]:
    """How this process was started: ``python /abs/train.py`` or ``python -m module``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        return [sys.executable, str(Path(HydraConfig.get().runtime.cwd, sys.argv[0]).resolve())]
    if spec.name.startswith("submitit"):
        raise VaelabError(
            "trainer.devices > 1 under hydra/launcher=submitit_local is not supported: the "
            "job runs inside submitit's worker, which cannot be re-run per rank; use "
            "trainer.devices=1 there, or the basic launcher, or hydra/launcher=slurm"
        )
    return [sys.executable, "-m", spec.name]


def rank_command(local_rank: int) -> tuple[list[str], str]:
    """(command, cwd) that starts local rank ``local_rank`` of the current Hydra job as a
    single run writing into the job's output dir (replaces Lightning's ``_hydra_subprocess_cmd``,
    same signature)."""
    global _launched_ranks
    _launched_ranks = True
    hydra_cfg = HydraConfig.get()
    command = [
        *_entry_command(),
        f"--config-name={hydra_cfg.job.config_name}",
        *(
            f"--config-dir={source.path}"
            for source in hydra_cfg.runtime.config_sources
            if source.provider == "command-line"
        ),
        *hydra_cfg.overrides.task,
        "hydra.mode=RUN",  # hparams_search=optuna sets MULTIRUN in the config itself
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        # rank 0 already wrote the job's .hydra/ and runs the sweep's callbacks
        "hydra.output_subdir=null",
    ]
    return command, hydra_cfg.runtime.cwd


def start_extra_ranks_as_this_job() -> None:
    """In a Hydra multirun, make Lightning start extra local DDP ranks with ``rank_command``.
    Nothing changes for single runs, where Lightning's own command is right."""
    global _launched_ranks
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    subprocess_script._hydra_subprocess_cmd = rank_command
    if _launched_ranks:  # a previous job of this sweep ran DDP from this process
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name in _LAUNCH_ENV:
            os.environ.pop(name, None)
        _launched_ranks = False


def wait_for_extra_ranks(trainer, timeout: float = 120.0) -> None:
    """In a Hydra multirun, return once the extra local ranks that this job started have
    exited (at most ``timeout`` seconds, then a warning), so that the next job of the sweep
    starts its ranks with none of this job's still running. Nothing for a single run."""
    if not _launched_ranks:
        return
    deadline = time.monotonic() + timeout
    for proc in getattr(trainer.strategy.launcher, "procs", []):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "rank process %d of this job still runs %.0f s after the job ended; the "
                "sweep goes on without it",
                proc.pid,
                timeout,
            )
