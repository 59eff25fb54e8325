"""Several optimizer steps per ``training_step`` call (``model.steps_per_call``): the
machinery, in one place that a researcher never has to open.

``VAELitModule`` mixes it in. At the start of fit it decides whether several steps per call
are the computation of one step per call (``_one_step_reason``: the module's own
``training_step``, one optimizer, automatic optimization, a data module that serves several
batches per item); where they are, it takes the optimization over (manual optimization, the
Trainer's clipping and accumulation applied here) and each call takes N steps, bit for bit
those of N calls (``tests/test_steps_per_call.py``); elsewhere the run takes one step per
call, as Lightning does, and says why in one line.

Lightning has no public API for several optimizer steps in one call, so three of its loop's
counters are used here, and only here, on this path:

- ``fit_loop.epoch_loop._batches_that_stepped`` (private): the step the loggers log at.
  Lightning adds one per call; ``_several_steps`` adds the call's other steps, so that the
  logging step equals ``global_step`` as with one step per call. Missing: a public way to
  advance the logging step.
- ``fit_loop.epoch_loop.manual_optimization.optim_step_progress``: what ``global_step``
  counts. The direct step path (``_steps_directly``) steps the optimizer itself and counts
  the step as ``LightningOptimizer.step`` does. Missing: a public way to step without the
  per-step hooks.
- ``fit_loop.epoch_loop.batch_progress``: whether a call is the epoch's last, when the
  epoch-interval schedulers step (as Lightning steps them for automatic optimization).
  Missing: a public "last batch of the epoch" for manual optimization.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from vaelab.errors import VaelabError
from vaelab.evaluation.metrics import ElboMeans

log = logging.getLogger(__name__)

TERMS = ElboMeans.TERMS
MONITOR = "val/loss"  # what a ReduceLROnPlateau scheduler follows


def optimizer_count(configured) -> int:
    """How many optimizers a ``configure_optimizers`` result holds (any of the forms
    Lightning accepts: an optimizer, a dict, a list of either, or (optimizers, schedulers))."""
    if configured is None:
        return 0
    if isinstance(configured, torch.optim.Optimizer | dict):
        return 1
    if isinstance(configured, tuple) and len(configured) == 2 and isinstance(configured[0], list):
        return len(configured[0])
    if isinstance(configured, list | tuple):
        return sum(isinstance(c, torch.optim.Optimizer | dict) for c in configured)
    return 1


class SeveralStepsPerCall:
    """The mixin (module docstring). The module provides ``training_loss(x)`` (loss and
    per-image terms of one batch), ``_beta_at(step)`` and ``configure_gradient_clipping``;
    ``_several_steps_home`` names the class whose ``training_step`` and
    ``configure_optimizers`` take the steps."""

    _several_steps_home: ClassVar[type | None] = None

    def _init_several_steps(self, steps_per_call: int) -> None:
        # (clip value, algorithm, batches per optimizer step): the Trainer's, applied by the
        # multi-step training_step
        self._clip: tuple[float | None, str | None] = (None, None)
        self._accumulate = 1
        self._epoch_steps = 0  # optimizer steps taken in this epoch
        # the steps each training_step call takes: model.steps_per_call, or 1 where several
        # would not be the same computation (decided at the start of fit: _one_step_reason)
        self.steps_per_call = steps_per_call
        self._several = False  # this machinery runs the optimization
        self._direct = False  # the steps skip Lightning's per-step hooks (_steps_directly)

    def _several_steps_setup(self) -> None:
        """At the start of fit: take the steps over when several per call are the same
        computation (``_one_step_reason``), else fall back to one, saying why in one line."""
        if self.hparams.get("steps_per_call", 1) <= 1:
            return
        reason = self._one_step_reason()
        if reason is None:
            self._take_over_optimization()
            return
        self.steps_per_call = 1
        if self.global_rank == 0:
            log.info(
                "model.steps_per_call=%s: one optimizer step per training_step call, as "
                "Lightning takes them (%s)",
                self.hparams.steps_per_call,
                reason,
            )

    def _one_step_reason(self) -> str | None:
        """Why several optimizer steps per call would not be the computation this module and
        data module describe (None: they would be): the module optimizes in its own way
        (manual optimization, its own ``training_step``, several optimizers), or the data
        module does not serve several batches per item (``train_batches_per_item``)."""
        cls, name = type(self), type(self).__name__
        if not self.automatic_optimization:
            return f"{name} optimizes manually"
        home = self._several_steps_home  # the class whose training_step takes the steps
        if cls.training_step is not home.training_step:
            return f"{name} overrides training_step"
        if cls.configure_optimizers is not home.configure_optimizers:
            count = optimizer_count(self.configure_optimizers())
            if count != 1:
                return f"{name}.configure_optimizers returns {count} optimizers"
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "train_batches_per_item"):
            what = "no data module" if datamodule is None else type(datamodule).__name__
            return f"{what} serves one batch per item (no train_batches_per_item)"
        return None

    def _take_over_optimization(self) -> None:
        """Switch to manual optimization for several steps per call: the Trainer's clipping and
        accumulation are applied by ``training_step`` instead, the data module serves
        ``batches_per_call`` batches per item, and counts the Trainer takes in batches
        (``val_check_interval``) become counts of calls; ``limit_train_batches`` goes to the
        data module, which serves that many batches."""
        trainer, n = self.trainer, int(self.hparams.steps_per_call)
        self._clip = (trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        self._accumulate = int(trainer.accumulate_grad_batches)
        trainer.gradient_clip_val = None
        trainer.accumulate_grad_batches = 1
        per_call = self.batches_per_call
        value = trainer.val_check_interval
        if isinstance(value, int) and not isinstance(value, bool):
            if value % per_call:
                raise VaelabError(
                    f"trainer.val_check_interval={value} counts batches of data.batch_size, "
                    f"and with model.steps_per_call={n} (x accumulate_grad_batches="
                    f"{self._accumulate}) a training call takes {per_call}: give a multiple "
                    f"of {per_call}, a fraction of the epoch, or model.steps_per_call=1"
                )
            trainer.val_check_interval = value // per_call
        datamodule = trainer.datamodule
        datamodule.train_batches_per_item = per_call
        # the data module's sampler keeps limit_train_batches in batches (the last call of an
        # epoch takes what is left); Lightning then takes every call it serves
        limit = trainer.limit_train_batches
        if limit is not None and limit != 1.0:
            datamodule.train_batch_limit = limit
            trainer.limit_train_batches = 1.0
        self._batch_size = int(datamodule.batch_size)
        self.automatic_optimization = False
        self._several = True
        # Lightning compares log_every_n_steps with the calls of an epoch; the steps are logged
        warnings.filterwarnings(
            "ignore", message=r"The number of training batches \(\d+\) is smaller than the log"
        )

    _HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")

    def _steps_directly(self) -> bool:
        """Whether the steps of a call may run ``loss.backward()`` and the optimizer's own
        ``step`` instead of ``manual_backward`` and Lightning's ``LightningOptimizer.step``:
        those dispatch ``on_before_backward``, ``on_after_backward`` and
        ``on_before_optimizer_step`` to every callback and the module at every step (tens of
        microseconds each, docs/speed.md), so they are skipped when nothing overrides those
        hooks or ``backward``, in one process (``SingleDeviceStrategy``: DDP prepares its
        reducer in Lightning's backward) at full precision (no gradient scaler). The
        optimizer steps are counted in Lightning's own progress, as its step counts them."""
        trainer = self.trainer
        overridden = any(
            getattr(type(callback), hook) is not getattr(L.Callback, hook)
            for callback in trainer.callbacks
            for hook in self._HOOKS
        ) or any(
            getattr(type(self), hook) is not getattr(L.LightningModule, hook)
            for hook in (*self._HOOKS, "backward")
        )
        return (
            not overridden
            and type(trainer.strategy) is SingleDeviceStrategy
            and str(trainer.precision) == "32-true"
        )

    @property
    def batches_per_call(self) -> int:
        """Batches of ``data.batch_size`` in one training_step call."""
        return self.steps_per_call * self._accumulate

    def _epoch_batches(self) -> int:
        """Batches of ``data.batch_size`` in this rank's training epoch."""
        sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None) or getattr(
            self.trainer.train_dataloader, "sampler", None
        )
        return int(getattr(sampler, "num_batches", self.trainer.num_training_batches))

    def _several_steps_train_start(self) -> None:
        """The run's optimizer steps per epoch and in all: Lightning counts calls."""
        trainer = self.trainer
        self._direct = self._steps_directly()
        batches = min(trainer.num_training_batches * self.batches_per_call, self._epoch_batches())
        self._steps_per_epoch = math.ceil(batches / self._accumulate)
        self._total_steps = self._run_steps()

    def _several_steps_batch_end(self) -> None:
        """The epoch's schedulers step after its last call, before validation, as Lightning
        steps them for automatic optimization."""
        loop = self.trainer.fit_loop.epoch_loop
        if loop.batch_progress.current.ready == self.trainer.num_training_batches or (
            loop.batch_progress.is_last_batch
        ):
            self._step_schedulers("epoch", index=self.current_epoch)

    def _several_steps(self, batch) -> dict:
        """Up to ``steps_per_call`` optimizer steps on consecutive batches of ``batch`` (split
        in batches of ``data.batch_size``), each as Lightning's automatic optimization takes
        it: zero the gradients, backward (divided by the batches accumulated), clip, step.
        Stops at ``trainer.max_steps``. Returns the steps' losses [S] (for the NaN guard)."""
        x, _ = batch
        optimizer = self.optimizers()
        trainer, group = self.trainer, self._accumulate
        chunks = x.split(self._batch_size)
        losses = []
        direct = self._direct  # backward and the optimizer's step without Lightning's hooks
        progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        for start in range(0, len(chunks), group):
            if 0 <= trainer.max_steps <= self.global_step:
                break
            step = self.global_step  # Lightning logs a step's values at its count before it
            log_now = (step + 1) % trainer.log_every_n_steps == 0
            optimizer.zero_grad()
            for chunk in chunks[start : start + group]:
                loss, terms, _ = self.training_loss(chunk)
                if direct:
                    (loss / group if group > 1 else loss).backward()
                else:
                    self.manual_backward(loss / group if group > 1 else loss)
            losses.append(loss.detach())
            value, algorithm = self._clip
            if value:  # the hook Lightning calls, with the optimizer it is given there
                self.configure_gradient_clipping(optimizer.optimizer, value, algorithm)
            if direct:  # counted as Lightning's LightningOptimizer.step counts it
                progress.increment_ready()
                optimizer.optimizer.step()
                progress.increment_completed()
            else:
                optimizer.step()
            self._step_schedulers("step", index=self._epoch_steps)
            self._epoch_steps += 1
            if log_now:  # the steps Lightning would log at with one step per call
                self._log_step({t: v.mean() for t, v in zip(TERMS, terms, strict=True)}, step)
        # Lightning adds one per call: keep its logging step equal to the optimizer steps
        trainer.fit_loop.epoch_loop._batches_that_stepped += max(len(losses) - 1, 0)
        return {"loss": torch.stack(losses) if losses else torch.zeros(0, device=x.device)}

    def _step_schedulers(self, interval: str, index: int, plateau: bool = False) -> None:
        """What Lightning's loop does for automatic optimization: step the schedulers of
        ``interval`` whose ``frequency`` divides ``index + 1`` (plateau ones with their
        monitored value)."""
        for config in self.trainer.lr_scheduler_configs:
            # (Lightning leaves reduce_on_plateau unset for manual optimization)
            on_plateau = isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            if config.interval != interval or on_plateau != plateau:
                continue
            if (index + 1) % config.frequency:
                continue
            if plateau:
                monitor = config.monitor or MONITOR
                value = self.trainer.callback_metrics.get(monitor)
                if value is None:
                    if config.strict:
                        raise VaelabError(
                            f"the learning-rate scheduler monitors {monitor!r}, which was not "
                            "logged; log it or set the scheduler's monitor"
                        )
                    continue
                config.scheduler.step(value)
            else:
                config.scheduler.step()

    def _log_step(self, values: dict[str, torch.Tensor], step: int) -> None:
        """``train_step/*`` and the KL weight of optimizer step ``step`` to the loggers, at the
        step Lightning gives them with one step per call."""
        metrics = {f"train_step/{t}": float(v.detach()) for t, v in values.items()}
        if self.hparams.kl_schedule != "constant":
            # in float32, as self.log stores a float with one step per call
            metrics["train_step/beta"] = torch.tensor(self._beta_at(step)).item()
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)
