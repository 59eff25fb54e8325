"""Callbacks that keep a run's work when it is interrupted and stop it when the loss diverges.

Lightning already turns the signals into exceptions at safe points: SIGTERM sets a flag that
the loops check after each batch (``SIGTERMException``), Ctrl-C raises ``KeyboardInterrupt``;
either way every callback's ``on_exception`` runs before fit returns. These callbacks only
decide what to save and what to say.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaelab.errors import NonFiniteLossError

log = logging.getLogger(__name__)


def signal_name(exception: BaseException) -> str | None:
    """'SIGTERM' or 'SIGINT' when ``exception`` is how Lightning reports that signal."""
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    return None


class SaveOnInterrupt(Checkpoint):
    """What Lightning's ``OnExceptionCheckpoint`` does, on interruptions only: on SIGINT or SIGTERM
    during fit, saves the full training state (weights, optimizer, loop progress, callback and
    data-order states) to ``<dirpath>/<filename>.ckpt``, so a resumed run continues at the batch
    where this one stopped; after any other exception (a NaN loss, a bug) the weights are not
    worth keeping. The file is removed when a fit completes.

    Not a subclass of ``OnExceptionCheckpoint``: with one among its callbacks, Lightning turns
    ``fit(ckpt_path=None)`` into ``ckpt_path="last"`` and silently resumes whatever checkpoint
    the run dir holds. A run continues only from the checkpoint vaelab names (``resume=``,
    ``ckpt_path=``).

    The first Ctrl-C is handled like SIGTERM: training stops at the next batch boundary, where
    the saved state is consistent (a ``KeyboardInterrupt`` can strike between an optimizer step
    and the progress counters); a second Ctrl-C stops at once.

    A signal that comes during validation (or just before it) takes effect when validation
    ends: Lightning would stop it after the current batch, and a run resumed from there skips
    the rest of that validation, so the epoch's validation metrics, its best-checkpoint
    decision and its epoch checkpoint would be lost.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted") -> None:
        super().__init__()
        if not filename:
            raise ValueError("The filename cannot be empty")
        self.dirpath, self.filename = str(dirpath), filename
        self.path = Path(self.dirpath) / f"{filename}.ckpt"
        self.ckpt_path = str(self.path)
        self.signal: str | None = None
        self.saved: Path | None = None
        self._sigint_received = False
        self._previous_sigint = None
        self._lightning_sigterm = None  # Lightning's SIGTERM handler, while validation runs
        self._deferred = False  # a SIGTERM received during validation

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sigint_received = False
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        # Lightning's SIGTERM handler (installed for fit) makes the loops stop at a safe point
        lightning_handles_sigterm = signal.getsignal(signal.SIGTERM) not in (
            signal.SIG_DFL,
            signal.SIG_IGN,
            None,
        )
        if self._sigint_received or not lightning_handles_sigterm:
            raise KeyboardInterrupt
        self._sigint_received = True
        # os.write: print() inside a signal handler can hit a reentrant write of sys.stderr
        os.write(2, b"\nCtrl-C: stopping after this batch (press it again to stop at once)\n")
        os.kill(os.getpid(), signal.SIGTERM)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        connector = trainer._signal_connector  # where Lightning's loops read the signal
        # received during the epoch's last batch: the training loop checks after validation
        self._deferred, connector.received_sigterm = connector.received_sigterm, False
        self._lightning_sigterm = signal.signal(signal.SIGTERM, self._defer_sigterm)

    def _defer_sigterm(self, signum, frame) -> None:
        self._deferred = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_deferral(trainer)

    def _end_deferral(self, trainer: L.Trainer) -> None:
        """Lightning's SIGTERM handler back; a signal deferred during validation now stops the
        training loop at its next check (after this batch, or at the epoch's end)."""
        if self._lightning_sigterm is not None:
            signal.signal(signal.SIGTERM, self._lightning_sigterm)
            self._lightning_sigterm = None
        if self._deferred:
            self._deferred = False
            trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """A fit that completed: the state saved at an earlier interruption is spent."""
        trainer.strategy.remove_checkpoint(self.ckpt_path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._end_deferral(trainer)  # an error inside validation: Lightning's handler back
        self.signal = signal_name(exception)
        if self.signal is not None and self._sigint_received:
            self.signal = "SIGINT"  # turned into SIGTERM by _on_sigint
        if self.signal is not None and trainer.state.fn == TrainerFn.FITTING:
            # during test the loaded weights are the best checkpoint's, not the latest
            trainer.save_checkpoint(self.ckpt_path)  # the full training state
            self.saved = self.path
            log.info("%s received: training state saved to %s", self.signal, self.path)
        self._restore_sigint()


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file written (or resumed from) before now, if any."""
    paths = [
        Path(path)
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint)
        for path in (callback.last_model_path, callback.best_model_path)
        if path
    ]
    paths = [p for p in paths if p.is_file()]
    if paths:
        return str(max(paths, key=lambda p: p.stat().st_mtime))
    return trainer.ckpt_path


class StopOnNonFiniteLoss(L.Callback):
    """Stops fit at the first training batch whose loss is NaN or infinite, with a message
    naming the epoch, the batch and the last good checkpoint.

    No host sync per step, and no work on the device either: each batch's loss (a scalar, or
    the [S] losses of a call of S optimizer steps) is kept as it is. The host examines those
    kept since its last check together (one pass, one read) every ``check_every_n_steps``
    batches (None: the trainer's ``log_every_n_steps``, when values are read for the loggers
    anyway), at the epoch's last batch, before validation and before any checkpoint is saved
    (``on_save_checkpoint``), so no checkpoint with diverged weights replaces a good one: the
    checks come before ``ModelCheckpoint``'s saves, which Lightning runs after the other
    callbacks' hooks, at the end of validation or of the epoch.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be at least 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        # (loss, batch index, global step after it) of each batch since the last check
        self._pending: list[tuple[torch.Tensor, int, int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append((loss.detach(), batch_idx, trainer.global_step))
        every = self.check_every_n_steps or trainer.log_every_n_steps
        if (batch_idx + 1) % every == 0 or trainer.is_last_batch:
            self.check(trainer, batch_idx)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint):
        self.check(trainer)

    def check(self, trainer: L.Trainer, batch_idx: int | None = None) -> None:
        """Raise ``NonFiniteLossError`` if a batch since the last check had a non-finite loss
        (one device-to-host copy)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        losses = torch.cat([loss.float().reshape(-1) for loss, _, _ in pending])
        bad = ~torch.isfinite(losses)
        first = int(torch.where(bad.any(), bad.int().argmax(), -1))  # the one host read
        if first < 0:
            return
        for loss, batch, step_after in pending:  # which batch, and which step of its call
            if first >= loss.numel():
                first -= loss.numel()
                continue
            value = float(loss.reshape(-1)[first])
            if loss.ndim == 0:  # one step (or one accumulated batch) per call
                bad_batch, step = batch, step_after
            else:  # [S]: the losses of the S optimizer steps of one call (steps_per_call)
                module = trainer.lightning_module
                per_step = getattr(module, "_accumulate", 1)
                per_call = getattr(module, "batches_per_call", 1)
                # the step's first batch in the epoch, and its global step counted from 1
                bad_batch = first * per_step + batch * per_call
                step = first + (step_after - loss.numel() + 1)
            break
        lrs = [f"{g['lr']:g}" for opt in trainer.optimizers for g in opt.param_groups]
        checkpoint = last_good_checkpoint(trainer)
        raise NonFiniteLossError(
            f"training stopped: the loss is {'nan' if math.isnan(value) else value} at epoch "
            f"{trainer.current_epoch + 1}, batch {bad_batch + 1} (global step {step}, learning "
            f"rate {', '.join(lrs) or 'unknown'}); no checkpoint was written after it. Last good "
            f"checkpoint: {checkpoint or 'none (no epoch had finished)'}. Lower "
            "model.optimizer.lr (or add a warm-up) and train again"
        )


class FitTime(L.Callback):
    """The seconds a run has spent in fit over all its processes: this one's since fit
    started, plus those of the processes before it, saved in each checkpoint (a resumed run
    reads them from the checkpoint it continues from; time after that checkpoint, in a
    process that was killed, is not counted: its work is done again)."""

    def __init__(self) -> None:
        self.earlier = 0.0
        self._start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        now = 0.0 if self._start is None else time.perf_counter() - self._start
        return self.earlier + now

    def state_dict(self) -> dict:
        return {"fit_seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier = float(state_dict.get("fit_seconds", 0.0))
