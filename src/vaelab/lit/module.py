"""The generic LightningModule: trains any VAE variant on the beta-ELBO (or the IWAE bound)
and logs exact per-image means per split."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from vaelab.errors import VaelabError
from vaelab.evaluation.metrics import ElboMeans, LatentStats
from vaelab.science.bounds import ElboTerms, free_bits_kl, iwae_bound
from vaelab.science.distributions import flatten
from vaelab.science.schedules import kl_weight

SPLITS = ("train", "val", "test")
TERMS = ElboMeans.TERMS
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


class VAELitModule(L.LightningModule):
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
    ``train_step/beta``.

    Objectives, for every variant: ``elbo`` (with ``kl_schedule`` and ``free_bits``) or
    ``iwae`` with ``k`` samples (Burda et al. 2015; beta, schedule and free bits do not apply).
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
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        compile: bool = False,
        **net_args,
    ) -> None:
        super().__init__()
        for key, value in net_args.items():  # plain lists in the checkpoint
            if isinstance(value, tuple):
                net_args[key] = list(value)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = build_net(net, net_args)
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

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """Per-image (loss, recon, kl) [B] for one batch, one z sample each."""
        parts = self.net.elbo(x, generator=self.noise)
        return ElboTerms(parts.recon + self.hparams.beta * parts.kl, parts.recon, parts.kl)

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
        hp = self.hparams
        total = self._total_steps if hp.kl_schedule == "cyclical" else 1
        return kl_weight(
            self.global_step,
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

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, ElboTerms]:
        """(scalar to minimise, per-image ELBO terms to log) for one training batch."""
        hp, net = self.hparams, self.net
        if hp.objective == "iwae":
            log_w = net.log_importance_weights(x, hp.k, generator=self.noise)
            loss = -iwae_bound(log_w).mean()
            with torch.no_grad():  # what is logged: the ELBO's terms, one z per image
                terms = self.elbo_terms(x)
            return loss, terms
        parts = net.elbo(x, generator=self.noise)
        terms = ElboTerms(parts.recon + hp.beta * parts.kl, parts.recon, parts.kl)
        if hp.free_bits > 0:
            # per latent dimension where the KL is in closed form, else each group's whole KL
            # against free_bits times its size
            kl_term = sum(
                free_bits_kl(part, hp.free_bits * net.latent_sizes[group] / part.shape[1])
                for group, part in parts.kl_parts.items()
            )
        else:
            kl_term = parts.kl.mean()
        return parts.recon.mean() + self.current_beta() * kl_term, terms

    def on_train_start(self) -> None:
        # the cyclical schedule's length, read once: Lightning recomputes it on each access
        self._total_steps = int(self.trainer.estimated_stepping_batches)
        # optimizer steps per epoch, for a warm-up given in epochs (kl_warmup_epochs)
        batches = self.trainer.num_training_batches
        if math.isfinite(batches):
            self._steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)

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
        x, _ = batch
        loss, terms = self.objective(x)
        stacked = torch.stack(terms)
        self.epoch_means["train_means"].update(stacked)
        # on device, for the progress bar to read when it refreshes (no host read per step)
        self.latest_train_terms = stacked.detach()
        # logged only on the steps Lightning writes to the loggers (its own test, with
        # _batches_that_stepped == global_step): each value logged is read from the device
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            for term, values in zip(TERMS, terms, strict=True):
                self.log(f"train_step/{term}", values.mean())
            self.log("train_step/beta", self.current_beta())
        return loss

    def _eval_step(self, batch, split: str) -> None:
        x, _ = batch
        parts = self.net.elbo(x, generator=self.noise)
        terms = (parts.recon + self.hparams.beta * parts.kl, parts.recon, parts.kl)
        self.epoch_means[f"{split}_means"].update(torch.stack(terms))
        if split == "val":
            self.latent_stats.update(flatten(parts.posterior.mean), parts.kl_per_dimension())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

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
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(params=self.parameters())
        if getattr(optimizer, "_step_supports_amp_scaling", False) and self._clips_mixed():
            # Lightning refuses to clip a fused optimizer's gradients under mixed precision
            # (it would unscale them inside its step); the unfused step is the same maths
            optimizer = factory(params=self.parameters(), fused=False)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }
