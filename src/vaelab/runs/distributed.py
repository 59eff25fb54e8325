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

A DDP run never hangs on a rank that is missing (``DDPStrategy``, Lightning's own with a
watched start): the ranks meet in a rendezvous that rank 0 polls, so a rank that exits before
it, or a rendezvous that takes longer than ``rendezvous_timeout`` seconds, ends the run with
one ``DistributedRunError`` line instead of torch's 30-minute wait; a rank that exits during
training ends it the same way (gloo reports the closed connection in rank 0's next collective;
a watchdog thread stops rank 0 if that does not come within ``grace`` seconds). Lightning's own
observer of the ranks is replaced: it SIGKILLs rank 0, which would end a whole sweep with no
word of why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.distributed import _init_dist_connection, _set_num_threads_if_needed
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.strategies.launchers import subprocess_script

from vaelab.errors import DistributedRunError, VaelabError

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
    """At the end of a run, stop watching its extra ranks (``RankWatchdog``: the run's results
    are written); in a Hydra multirun, also return only once the extra local ranks that this
    job started have exited (at most ``timeout`` seconds, then a warning), so that the next job
    of the sweep starts its ranks with none of this job's still running."""
    watchdog = getattr(trainer.strategy.launcher, "watchdog", None)
    if watchdog is not None:
        watchdog.handled.set()
        watchdog.stop()
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


def rank_log(local_rank: int) -> Path | None:
    """The log file of extra rank ``local_rank`` (Hydra's job log, ``train_ddp_process_<r>.log``
    in rank 0's run dir), where Hydra is in use."""
    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir, f"train_ddp_process_{local_rank}.log")


def _status(code: int) -> str:
    """An exit status as a shell shows it: ``1``, or ``-9 (SIGKILL)`` for a signal."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)


def _log_tail(path: Path | None, lines: int = 3) -> str:
    """The last non-empty lines of a rank's log, joined on one line."""
    if path is None or not path.is_file():
        return "no log"
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").splitlines()
        tail = [line.strip() for line in text if line.strip()][-lines:]
        return f"the end of its log ({path}): " + (" | ".join(tail) or "empty")
    return "no log"


def rank_exit_message(local_rank: int, proc: subprocess.Popen, when: str) -> str:
    """One line: which rank exited, its pid and exit status, and the end of its log."""
    return (
        f"DDP rank {local_rank} (pid {proc.pid}) exited with status {_status(proc.returncode)} "
        f"{when}, so the run stopped; {_log_tail(rank_log(local_rank))}"
    )


class RankWatchdog(threading.Thread):
    """Watches the extra ranks that rank 0 started. When one exits with a non-zero status it
    aborts the process group where the backend can (NCCL), and if rank 0 has not raised the
    failure itself (``DDPStrategy.raise_rank_failure`` sets ``handled``) ``grace`` seconds
    later, prints it and ends rank 0 (its checkpoints are written atomically, so they stay
    whole). Stops by itself once every rank has exited with 0."""

    def __init__(self, procs: list[subprocess.Popen], grace: float = 20.0, period: float = 0.5):
        super().__init__(daemon=True, name="vaelab-rank-watchdog")
        self.procs, self.grace, self.period = procs, grace, period
        self.failure: str | None = None
        self.handled = threading.Event()  # rank 0 raised the failure: no forced exit
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            codes = [proc.poll() for proc in self.procs]
            if all(code == 0 for code in codes):
                return
            failed = next((i for i, code in enumerate(codes) if code), None)
            if failed is not None:
                proc = self.procs[failed]
                self.failure = rank_exit_message(failed + 1, proc, "during the run")
                break
        else:
            return
        log.debug("watchdog: %s", self.failure)
        with contextlib.suppress(Exception):  # NCCL's collectives raise once aborted; gloo's
            if dist.is_initialized() and dist.get_backend() == "nccl":  # see the closed socket
                dist.distributed_c10d._abort_process_group()
        if self.handled.wait(self.grace) or self._stop_event.is_set():
            return
        os.write(2, f"error: {self.failure}\n".encode())
        _kill(self.procs)
        os._exit(1)


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()


class WatchedLauncher(subprocess_script._SubprocessScriptLauncher):
    """Lightning's launcher of the extra ranks, with a ``RankWatchdog`` instead of Lightning's
    observer (which SIGKILLs rank 0 with no message when a rank dies)."""

    watchdog: RankWatchdog | None = None

    def launch(self, function, *args, trainer=None, **kwargs):
        self.cluster_environment.validate_settings(
            num_devices=self.num_processes, num_nodes=self.num_nodes
        )
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            self.watchdog = RankWatchdog(self.procs)
            self.watchdog.start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class DDPStrategy(LightningDDPStrategy):
    """Lightning's DDP strategy whose start never hangs: the ranks first meet in a rendezvous
    on the TCP store that rank 0 polls, so it ends with one ``DistributedRunError`` line when
    an extra rank exits before it or when not every rank has joined within
    ``rendezvous_timeout`` seconds; the process group is then built on that store. Extra
    ranks started by rank 0 are watched (``WatchedLauncher``) for the rest of the run.
    ``timeout`` (seconds here, a ``timedelta`` in Lightning) bounds each collective."""

    def __init__(
        self, rendezvous_timeout: float = 300.0, timeout: float | timedelta = 1800.0, **kwargs
    ):
        if rendezvous_timeout <= 0:
            raise VaelabError(
                f"trainer.strategy.rendezvous_timeout={rendezvous_timeout} must be positive "
                "(seconds the DDP processes may take to start and meet, e.g. 300)"
            )
        if not isinstance(timeout, timedelta):
            timeout = timedelta(seconds=float(timeout))
        super().__init__(timeout=timeout, **kwargs)
        self.rendezvous_timeout = float(rendezvous_timeout)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is subprocess_script._SubprocessScriptLauncher:
            self._launcher = WatchedLauncher(
                self.cluster_environment, self.num_processes, self.num_nodes
            )

    def setup_distributed(self) -> None:
        # Lightning's setup_distributed, with the process group built on the polled store
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        kwargs = {"timeout": self._timeout}
        kwargs["device_id"] = self.root_device if self.root_device.type != "cpu" else None
        if not dist.is_initialized():
            kwargs["store"] = self.rendezvous()
        _init_dist_connection(self.cluster_environment, self._process_group_backend, **kwargs)

    def rendezvous(self) -> dist.TCPStore:
        """Every rank joins the TCP store of the main address and port; return it once all
        ``world_size`` have, polling so that a rank that exited or the timeout ends the wait
        with one ``DistributedRunError``."""
        env, rank, world = self.cluster_environment, self.global_rank, self.world_size
        deadline = time.monotonic() + self.rendezvous_timeout
        where = f"{env.main_address}:{env.main_port}"
        try:
            store = dist.TCPStore(
                env.main_address,
                env.main_port,
                world,
                is_master=rank == 0,
                timeout=timedelta(seconds=self.rendezvous_timeout),
                wait_for_workers=False,
            )
        except (RuntimeError, dist.DistStoreError) as err:
            self._give_up()
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise DistributedRunError(
                f"DDP rank {rank} could not reach the rendezvous at {where} within "
                f"{self.rendezvous_timeout:g} s ({first})"
            ) from None
        store.set(f"vaelab/joined/{rank}", "1")
        names = [f"vaelab/joined/{r}" for r in range(world)]
        while not store.check(names):
            self.raise_rank_failure("before the processes met")
            if time.monotonic() > deadline:
                joined = sum(store.check([name]) for name in names)
                self._give_up()
                raise DistributedRunError(
                    f"the DDP processes did not meet within trainer.strategy.rendezvous_timeout"
                    f"={self.rendezvous_timeout:g} s: {joined} of {world} joined at {where}; "
                    "a process that starts slowly needs a larger timeout, one that never "
                    "starts has its error in its train_ddp_process_<rank>.log"
                )
            time.sleep(0.1)
        return store

    def raise_rank_failure(self, when: str = "during the run", wait: float = 0.0) -> None:
        """Raise ``DistributedRunError`` if an extra rank this process started has exited with
        a non-zero status (waiting up to ``wait`` seconds for one to be seen exiting)."""
        procs = getattr(self.launcher, "procs", [])
        deadline = time.monotonic() + wait
        while procs:
            failed = next((i for i, p in enumerate(procs) if p.poll()), None)
            if failed is not None:
                message = rank_exit_message(failed + 1, procs[failed], when)
                self._give_up()
                raise DistributedRunError(message)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def _give_up(self) -> None:
        """The run ends: no forced exit by the watchdog, no extra rank left running."""
        watchdog = getattr(self.launcher, "watchdog", None)
        if watchdog is not None:
            watchdog.handled.set()
            watchdog.stop()
        _kill(getattr(self.launcher, "procs", []))
