"""The generic LightningModule: trains any VAE variant on the beta-ELBO (or the IWAE bound)
and logs exact per-image means per split."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from vaelab.errors import VaelabError
from vaelab.evaluation.metrics import ElboMeans, LatentStats
from vaelab.lit.steps import MONITOR, TERMS, SeveralStepsPerCall
from vaelab.science.bounds import ElboTerms
from vaelab.science.distributions import flatten
from vaelab.science.objectives import ObjectiveInput, ObjectiveOutput, build_objective
from vaelab.science.schedules import kl_weight

SPLITS = ("train", "val", "test")
DEFAULT_NET = "vaelab.science.variants.vae.VAE"


def build_net(target: str, arguments: dict) -> nn.Module:
    """``target`` (a dotted class path, e.g. ``vaelab.science.variants.vae.VAE``) called with
    ``arguments``: the network a checkpoint or a config describes."""
    module_name, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise VaelabError(
            f"model.net={target!r} cannot be imported ({err}); name a class such as {DEFAULT_NET}"
        ) from None
    return cls(**arguments)


def build_net_for_shapes(target: str, arguments: dict) -> nn.Module:
    """The network ``build_net`` makes, for reading its layers' and weights' shapes: built on
    the meta device (no memory, no initialisation), or on the CPU where its constructor
    cannot run there (it computes with its tensors: ``.item()``, ``unique``, ...). A
    ``VaelabError`` (a refused argument) is raised as it is."""
    try:
        with torch.device("meta"):
            return build_net(target, arguments)
    except VaelabError:
        raise
    except Exception:  # noqa: BLE001 - any meta-device failure: build it for real
        with torch.device("cpu"):
            return build_net(target, arguments)


def module_arguments(cls: type) -> tuple[str, ...] | None:
    """The constructor arguments that LightningModule class ``cls`` keeps for itself, not its
    network's: for ``VAELitModule`` and its subclasses, those of each ``__init__`` from
    ``cls`` down to ``VAELitModule``'s (a subclass passes the others on with ``**kwargs``),
    ``net`` aside; for another class, its ``__init__``'s. None where an ``__init__`` takes
    ``**kwargs`` that reach no known constructor (its arguments cannot be listed)."""
    names: list[str] = []
    for owner in cls.__mro__:
        if "__init__" not in vars(owner):
            continue
        try:
            params = inspect.signature(owner.__init__).parameters
        except (TypeError, ValueError):
            return None
        names += [
            n
            for n, p in params.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if owner is VAELitModule:
            return tuple(dict.fromkeys(n for n in names if n != "net"))
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return tuple(dict.fromkeys(names))
    return None


def class_path(obj: object) -> str:
    """The dotted path of ``obj``'s class (what a ``_target_`` names)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class VAELitModule(SeveralStepsPerCall, L.LightningModule):
    """Trains the VAE variant ``net`` on the negative beta-ELBO (or the IWAE bound).

    The network is given as a config: ``net``, the dotted path of a variant class (a subclass
    of ``vaelab.science.variants.vae.VAE``), and ``**net_args``, its arguments (latent_dim,
    hidden_dims, likelihood, ...). Both are saved in the checkpoint with the other arguments
    (all but the optimizer and scheduler factories), so ``VAELitModule.load_from_checkpoint(
    path)`` rebuilds any variant with no config.

    Logs ``{split}/loss``, ``{split}/recon`` and ``{split}/kl`` (nats per image) once per epoch:
    the mean over every image of the split, whatever the batch sizes; ``loss`` is always
    recon + beta * kl with the configured ``beta``, so runs compare whatever the objective.
    ``latest_train_terms`` holds the last training batch's terms [3, B] on the device (for
    the progress bar). Validation also logs ``val/active_units`` and keeps the per-dimension
    statistics (``LatentStats``) in ``val_latent_stats``; training logs the current KL weight as
    ``train_step/beta`` when ``kl_schedule`` varies it.

    The objective is ``model.objective``, by name (``vaelab.science.objectives``: ``elbo``
    with ``kl_schedule`` and ``free_bits``, ``iwae`` with ``k`` samples, ``beta_tcvae``, ...)
    with ``objective_args``; a subclass's own ``training_step`` calls ``training_loss(x)``.

    ``steps_per_call`` > 1: each ``training_step`` call takes that many optimizer steps on as
    many consecutive batches of the epoch, where that is the same computation as one step per
    call (``vaelab.lit.steps``, which says when it is not and falls back to one); a subclass
    with its own ``training_step`` or optimizers takes one step per call, as Lightning does.
    """

    def __init__(
        self,
        net: str = DEFAULT_NET,
        beta: float = 1.0,
        kl_schedule: str = "constant",
        kl_warmup_steps: int = 10000,
        kl_warmup_epochs: float | None = None,
        kl_cycles: int = 4,
        kl_cycle_ratio: float = 0.5,
        free_bits: float = 0.0,
        objective: str = "elbo",
        k: int = 1,
        objective_args: dict | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        compile: bool = False,
        steps_per_call: int = 1,
        **net_args,
    ) -> None:
        super().__init__()
        if int(steps_per_call) != steps_per_call or steps_per_call < 1:
            raise VaelabError(
                f"model.steps_per_call={steps_per_call} must be a whole number of optimizer "
                "steps per training_step call, at least 1"
            )
        for key, value in net_args.items():  # plain lists in the checkpoint
            if isinstance(value, tuple):
                net_args[key] = list(value)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = build_net(net, net_args)
        # model.objective by name (vaelab.science.objectives); its arguments from
        # objective_args, else the model's keys of the same name (k, free_bits)
        self.objective_fn = build_objective(objective, objective_args, self.hparams)
        self._dataset_size: int | None = None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epoch_means = nn.ModuleDict({f"{split}_means": ElboMeans() for split in SPLITS})
        # in checkpoints: a training epoch resumed mid-way logs its full mean (validation
        # restarts from scratch after a restore, so its state is not saved)
        self.epoch_means["train_means"].persistent(True)
        self.latent_stats = LatentStats(self.net.latent_dim)
        self.latest_train_terms: torch.Tensor | None = None
        # every draw of z in training and validation: seeded in setup, saved in checkpoints
        self.noise: torch.Generator | None = None
        # (clip value, algorithm, batches per optimizer step): the Trainer's, applied by the
        # multi-step training_step (steps_per_call > 1)
        self._init_several_steps(int(steps_per_call))

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """Per-image (loss, recon, kl) [B] for one batch, one z sample each."""
        parts = self.net.elbo(x, generator=self.noise)
        return ElboTerms(parts.recon + self.hparams.beta * parts.kl, parts.recon, parts.kl)

    def objective_input(self, x: torch.Tensor) -> ObjectiveInput:
        """What the objective receives for the training batch x [B, *input_shape]."""
        return ObjectiveInput(
            x,
            self.net,
            self.net.posterior(x),
            self.net.prior(),
            self.hparams.beta,
            self.current_beta(),
            self.global_step,
            self.dataset_size,
            self.noise,
        )

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, ElboTerms]:
        """(scalar to minimise, per-image ELBO terms [B]) of ``model.objective`` on one
        batch; nothing is recorded (``training_loss`` records them)."""
        out = self.objective_fn(self.objective_input(x))
        return out.loss, out.terms

    def _seed_noise(self) -> None:
        """The generator of z's draws, on the model's device, seeded from the run's seed
        (``seed_everything``; one stream per rank) when first needed there."""
        if self.noise is None or self.noise.device != self.device:
            seed = (torch.initial_seed() + 7919 * self.global_rank) % 2**63
            self.noise = torch.Generator(self.device).manual_seed(seed)

    def on_validation_start(self) -> None:
        self._seed_noise()

    def on_test_start(self) -> None:
        self._seed_noise()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the classes to rebuild from (eval.py, sample.py, resume): a subclass loads as itself
        checkpoint["module_class"] = class_path(self)
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            checkpoint["datamodule_class"] = class_path(datamodule)
        if self.noise is not None:
            checkpoint["noise_generator"] = self.noise.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._noise_state = checkpoint.get("noise_generator")

    def on_fit_start(self) -> None:
        self._seed_noise()
        state = getattr(self, "_noise_state", None)
        if state is not None:  # resumed: the draws continue where they stopped
            self.noise.set_state(state.cpu())
            self._noise_state = None

    def current_beta(self) -> float:
        """The KL weight at this optimizer step, from ``kl_schedule``."""
        return self._beta_at(self.global_step)

    def _beta_at(self, step: int) -> float:
        """The KL weight at optimizer step ``step`` (counted from 0), from ``kl_schedule``."""
        hp = self.hparams
        total = self._total_steps if hp.kl_schedule == "cyclical" else 1
        return kl_weight(
            step,
            hp.beta,
            hp.kl_schedule,
            self.warmup_steps(),
            int(total),
            hp.kl_cycles,
            hp.kl_cycle_ratio,
        )

    def warmup_steps(self) -> int:
        """The linear warm-up's length in optimizer steps: ``kl_warmup_steps``, or when
        ``kl_warmup_epochs`` is set, that many epochs of this run's optimizer steps per epoch
        (read from the Trainer at the start of fit, so it follows the batch size, the
        hold-out and ``limit_train_batches``)."""
        epochs = self.hparams.get("kl_warmup_epochs")
        if epochs is None:
            return self.hparams.kl_warmup_steps
        return round(epochs * getattr(self, "_steps_per_epoch", 1))

    def training_loss(self, x: torch.Tensor) -> ObjectiveOutput:
        """The objective (``model.objective``) on one training batch x [B, *input_shape], its
        per-image terms recorded for the epoch's ``train/*`` means and the progress bar, and
        the objective's own terms logged as ``train/<name>``. A ``training_step`` of a
        subclass calls this for the VAE's part of its loss."""
        out = self.objective_fn(self.objective_input(x))
        stacked = torch.stack(out.terms)
        self.epoch_means["train_means"].update(stacked)
        # on device, for the progress bar to read when it refreshes (no host read per step)
        self.latest_train_terms = stacked.detach()
        for name, value in out.logged.items():
            self.log(f"train/{name}", value.mean(), on_step=False, on_epoch=True, batch_size=len(x))
        return out

    @property
    def dataset_size(self) -> int | None:
        """Images in the training split (None when the training loader's data set has no
        length): what an objective that estimates q(z) from a batch needs."""
        if self._dataset_size is None and self._trainer is not None:
            try:
                self._dataset_size = len(self.trainer.train_dataloader.dataset)
            except (AttributeError, TypeError):
                return None
        return self._dataset_size

    def on_train_start(self) -> None:
        trainer = self.trainer
        if not self._several:
            # the cyclical schedule's length, read once: Lightning recomputes it on each access
            self._total_steps = int(trainer.estimated_stepping_batches)
            # optimizer steps per epoch, for a warm-up given in epochs (kl_warmup_epochs)
            batches = trainer.num_training_batches
            if math.isfinite(batches):
                self._steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
            return
        self._several_steps_train_start()

    def _run_steps(self) -> int:
        """The run's optimizer steps: its epochs' steps, or ``trainer.max_steps`` if fewer."""
        trainer = self.trainer
        total = self._steps_per_epoch * max(trainer.max_epochs or 1, 1)
        if trainer.max_epochs in (None, -1):
            total = trainer.max_steps
        return total if trainer.max_steps in (None, -1) else min(total, trainer.max_steps)

    def on_max_epochs_changed(self) -> None:
        """``trainer.max_epochs`` changed during fit (``vaelab.lit.budget.TimeBudget``): the
        run's optimizer steps, hence a cyclical KL schedule's length, follow."""
        if getattr(self, "_steps_per_epoch", None) is not None:
            self._total_steps = self._run_steps()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._several_steps_setup()

    def configure_model(self) -> None:
        if self.hparams.compile:  # in place: parameter names, hence checkpoints, stay the same
            self.net.compile()

    def _log_epoch(self, split: str) -> None:
        metric = self.epoch_means[f"{split}_means"]
        # count, not update_count: a checkpoint restores the state but not the update count
        if metric.count > 0:  # compute() reduces over ranks under DDP
            for term, value in metric.compute().items():
                self.log(f"{split}/{term}", value, prog_bar=term == "loss")
        metric.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self._several:
            return self._several_steps(batch)
        x, _ = batch
        loss, terms, _ = self.training_loss(x)
        # logged only on the steps Lightning writes to the loggers (its own test, with
        # _batches_that_stepped == global_step): each value logged is read from the device
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            for term, values in zip(TERMS, terms, strict=True):
                self.log(f"train_step/{term}", values.mean())
            if self.hparams.kl_schedule != "constant":  # a constant would be a flat chart
                self.log("train_step/beta", self.current_beta())
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_steps = 0

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._several:
            self._several_steps_batch_end()

    def _eval_step(self, batch, split: str) -> dict[str, torch.Tensor]:
        x, _ = batch
        parts = self.net.elbo(x, generator=self.noise)
        terms = (parts.recon + self.hparams.beta * parts.kl, parts.recon, parts.kl)
        self.epoch_means[f"{split}_means"].update(torch.stack(terms))
        mu = flatten(parts.posterior.mean).detach()
        if split == "val":
            self.latent_stats.update(mu, parts.kl_per_dimension())
        return {"posterior_mean": mu}

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The batch's posterior means [B, latent_dim] go to the callbacks'
        ``on_validation_batch_end`` (the figures' latent space reuses them)."""
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        if self._several and not self.trainer.fit_loop.restarting:
            self._step_schedulers("epoch", index=self.current_epoch, plateau=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if self.latent_stats.update_count:
            stats = self.latent_stats.compute()
            self.log("val/active_units", stats["active_units"])
            # per dimension: for callbacks to show as one histogram, not a scalar per dimension
            self.val_latent_stats = {k: v.detach().cpu() for k, v in stats.items()}
            self.val_latent_stats["epoch"] = self.current_epoch
        self.latent_stats.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _mixed_precision(self) -> bool:
        """Whether the Trainer runs mixed precision (bf16-mixed, 16-mixed)."""
        return self._trainer is not None and "mixed" in str(self._trainer.precision)

    def _clips_mixed(self) -> bool:
        """Whether the Trainer clips gradients and runs mixed precision."""
        return self._mixed_precision() and bool(self._trainer.gradient_clip_val)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """The Trainer's clipping (``trainer.gradient_clip_val``, ``gradient_clip_algorithm``).

        Norm clipping of a fused optimizer in full precision is done inside its step: the
        factor min(1, clip / (norm + 1e-6)) of ``clip_grad_norm_`` goes to the fused kernel as
        the divisor ``grad_scale`` (the hook ``torch.amp.GradScaler`` uses), which saves a pass
        over every gradient; the gradients and the update are those of clip-then-step to fp32
        rounding (tests/test_speed_paths.py). Anything else clips as Lightning does."""
        if (
            gradient_clip_val
            and (gradient_clip_algorithm or "norm") == "norm"  # None: Lightning's default
            and getattr(optimizer, "_step_supports_amp_scaling", False)
            and not self._mixed_precision()
        ):
            params = (p for group in optimizer.param_groups for p in group["params"])
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            optimizer.grad_scale = torch.clamp((norm + 1e-6) / gradient_clip_val, min=1.0)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        """The configured optimizer (``model.optimizer``) of the network's parameters, and the
        configured learning-rate scheduler (``model.scheduler``) when there is one."""
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(params=self.net.parameters())
        if getattr(optimizer, "_step_supports_amp_scaling", False) and self._clips_mixed():
            # Lightning refuses to clip a fused optimizer's gradients under mixed precision
            # (it would unscale them inside its step); the unfused step is the same maths
            optimizer = factory(params=self.net.parameters(), fused=False)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config = {"scheduler": scheduler, "monitor": MONITOR, "interval": "epoch"}
        if self._several:  # stepped by _step_schedulers, which knows MONITOR
            del config["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}


VAELitModule._several_steps_home = VAELitModule
