"""A training run sized to a time budget instead of a number of epochs."""

from __future__ import annotations

import logging
import math
import statistics
import time

import lightning as L
from lightning.pytorch.callbacks import Timer

from vaelab.errors import VaelabError

log = logging.getLogger(__name__)

# the schedulers whose horizon follows a resized run (``T_max``), by their config target
FOLLOWS = ("torch.optim.lr_scheduler.CosineAnnealingLR",)


def no_budget() -> str:
    return (
        "callbacks.time_budget sizes the run to trainer.max_time, which is null: give "
        "trainer.max_time=DD:HH:MM:SS (e.g. 00:00:30:00) or callbacks.time_budget=null"
    )


def fixed_horizon(scheduler: str) -> str:
    return (
        f"callbacks.time_budget resizes trainer.max_epochs and the scheduler {scheduler} "
        "cannot follow it; use lr_schedule=cosine or lr_schedule=constant, or "
        "callbacks.time_budget=null"
    )


class TimeBudget(L.Callback):
    """Sizes ``trainer.max_epochs`` to the budget of ``trainer.max_time``, so that a run ends
    at an epoch's end within it, with its learning-rate schedule complete, on whatever machine
    it runs.

    Lightning's ``max_time`` alone stops a run when the time is up, mid-epoch, wherever a
    schedule over ``trainer.max_epochs`` then is. Here, at the end of every epoch from the
    ``measure_epochs``-th on, ``max_epochs`` becomes the whole epochs that fit: the epochs done
    plus what is left of ``(1 - margin)`` of the budget over the time of an epoch (its steps,
    validation and checkpoints: the larger of the median since the second epoch and the last
    one). A scheduler with ``T_max`` (``CosineAnnealingLR``, ``lr_schedule=cosine``) follows:
    its cosine ends at the new horizon (its recursive form stays continuous). Any other
    scheduler is refused before training, as its horizon could not follow. The time counts
    as ``max_time`` counts it (Lightning's ``Timer``: training time, across a resume). With
    several processes, rank 0's plan is broadcast, so every rank stops at the same epoch.
    ``max_epochs`` in the config is an upper bound.
    """

    _now = staticmethod(time.monotonic)  # the clock of the epochs' times (Timer's own)

    def __init__(self, measure_epochs: int = 2, margin: float = 0.02) -> None:
        if measure_epochs < 1:
            raise ValueError(f"measure_epochs must be at least 1, got {measure_epochs}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.measure_epochs = measure_epochs
        self.margin = margin
        self.epoch_seconds: list[float] = []  # each epoch's time, end to end
        self.planned_epochs: int | None = None
        self._last_end: float | None = None

    def _timer(self, trainer: L.Trainer) -> Timer:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer._duration is None:
            raise VaelabError(no_budget())
        return timer

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._timer(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:  # (configured after setup)
            self._refuse_fixed_horizon(config.scheduler)
        if self.planned_epochs is not None:  # resumed: the plan of the interrupted run
            self._resize(trainer, pl_module, self.planned_epochs)
        self._last_end = self._now()

    @staticmethod
    def _refuse_fixed_horizon(scheduler) -> None:
        if not hasattr(scheduler, "T_max"):
            raise VaelabError(fixed_horizon(type(scheduler).__name__))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self._now()
        if self._last_end is not None:
            self.epoch_seconds.append(now - self._last_end)
        self._last_end = now
        done = trainer.current_epoch + 1
        if done < self.measure_epochs or not self.epoch_seconds:
            return
        later = self.epoch_seconds[1:] or self.epoch_seconds
        per_epoch = max(statistics.median(later), later[-1])
        timer = self._timer(trainer)
        left = (1 - self.margin) * timer._duration - timer.time_elapsed()
        epochs = max(done + max(math.floor(left / per_epoch), 0), done)
        epochs = int(trainer.strategy.broadcast(epochs, src=0))
        if epochs != trainer.max_epochs:
            log.info(
                "time budget: trainer.max_epochs=%d (after epoch %d, at %.1f s an epoch)",
                epochs, done, per_epoch,
            )  # fmt: skip
            self._resize(trainer, pl_module, epochs)

    def _resize(self, trainer: L.Trainer, pl_module: L.LightningModule, epochs: int) -> None:
        self.planned_epochs = epochs
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            config.scheduler.T_max = epochs
        follow = getattr(pl_module, "on_max_epochs_changed", None)
        if follow is not None:
            follow()

    def state_dict(self) -> dict:
        return {"planned_epochs": self.planned_epochs, "epoch_seconds": self.epoch_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.planned_epochs = state_dict.get("planned_epochs")
        self.epoch_seconds = list(state_dict.get("epoch_seconds", []))
