"""The LightningModule: wraps the VAE and its loss, logs exact per-image means per split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from vaelab.science.losses import (
    ElboTerms,
    elbo_loss,
    free_bits_kl,
    iwae_bound,
    kl_per_dimension,
    log_importance_weights,
    reconstruction_loss,
)
from vaelab.science.models import build_network
from vaelab.science.schedules import kl_weight

SPLITS = ("train", "val", "test")
TERMS = ("loss", "recon", "kl")
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: active when Var_x(E_q[z_u|x]) > 0.01


class EpochMeans(Metric):
    """Exact per-image means of the ELBO terms over an epoch, summed across DDP ranks.

    One ``update`` per batch with ``terms`` [len(TERMS), B]: a single small metric instead of
    one torchmetrics ``MeanMetric`` per term, which costs three times the per-step overhead.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(len(TERMS)), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, terms: torch.Tensor) -> None:
        self.sums += terms.detach().float().sum(1)
        self.count += terms.shape[1]

    def compute(self) -> dict[str, torch.Tensor]:
        return dict(zip(TERMS, self.sums / self.count, strict=True))


class LatentStats(Metric):
    """Per latent dimension over a split: the variance over images of the posterior mean
    (active units) and the mean KL, [D] each, summed across DDP ranks."""

    full_state_update = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        for name in ("mu_sum", "mu_sq_sum", "kl_sum"):
            self.add_state(name, torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        mu = mu.detach().float()
        self.mu_sum += mu.sum(0)
        self.mu_sq_sum += mu.pow(2).sum(0)
        self.kl_sum += kl_per_dimension(mu, logvar.detach().float()).sum(0)
        self.count += mu.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.mu_sum / self.count
        variance = (self.mu_sq_sum / self.count - mean.pow(2)).clamp(min=0)
        return {"mu_variance": variance, "kl_per_dim": self.kl_sum / self.count}


class VAELitModule(L.LightningModule):
    """Trains a VAE on the negative beta-ELBO (or the IWAE bound).

    Logs ``{split}/loss``, ``{split}/recon`` and ``{split}/kl`` (nats per image) once per epoch:
    the mean over every image of the split, whatever the batch sizes; ``loss`` is always
    recon + beta * kl with the configured ``beta``, so runs compare whatever the objective.
    Validation also logs ``val/active_units`` and ``val/kl_dim/<j>``; training logs the current
    KL weight as ``train_step/beta``. All constructor arguments but the optimizer and scheduler
    factories are saved in the checkpoint: ``VAELitModule.load_from_checkpoint(path)`` rebuilds
    the model with no config.

    Objectives: ``elbo`` (with ``kl_schedule`` and ``free_bits``) or ``iwae`` with ``k``
    samples (Burda et al. 2015; beta, schedule and free bits do not apply to it).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (256, 256),
        latent_dim: int = 32,
        architecture: str = "mlp",
        batch_norm: bool = False,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        kl_schedule: str = "constant",
        kl_warmup_steps: int = 10000,
        kl_cycles: int = 4,
        kl_cycle_ratio: float = 0.5,
        free_bits: float = 0.0,
        objective: str = "elbo",
        k: int = 1,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        compile: bool = False,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        input_shape, hidden_dims = list(input_shape), list(hidden_dims)  # plain lists in the ckpt
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = build_network(
            architecture, input_shape, hidden_dims, latent_dim, batch_norm, onednn_linear
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epoch_means = nn.ModuleDict({f"{split}_means": EpochMeans() for split in SPLITS})
        # in checkpoints: a training epoch resumed mid-way logs its full mean (validation
        # restarts from scratch after a restore, so its state is not saved)
        self.epoch_means["train_means"].persistent(True)
        self.latent_stats = LatentStats(latent_dim)

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """Per-image (loss, recon, kl) [B] for one batch, one z sample each."""
        out = self.net(x)
        return elbo_loss(
            out.logits, x, out.mu, out.logvar, self.hparams.beta, self.hparams.likelihood
        )

    def current_beta(self) -> float:
        """The KL weight at this optimizer step, from ``kl_schedule``."""
        hp = self.hparams
        total = self._total_steps if hp.kl_schedule == "cyclical" else 1
        return kl_weight(
            self.global_step,
            hp.beta,
            hp.kl_schedule,
            hp.kl_warmup_steps,
            int(total),
            hp.kl_cycles,
            hp.kl_cycle_ratio,
        )

    def objective(self, x: torch.Tensor) -> tuple[torch.Tensor, ElboTerms]:
        """(scalar to minimise, per-image ELBO terms to log) for one training batch."""
        hp = self.hparams
        if hp.objective == "iwae":
            mu, logvar = self.net.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(
                hp.k, *mu.shape, device=mu.device, dtype=mu.dtype
            )
            logits = self.net.decode_logits(z.flatten(0, 1)).view(hp.k, *x.shape)
            log_w = log_importance_weights(logits, x, z, mu, logvar, hp.likelihood)
            recon = reconstruction_loss(logits[0], x, hp.likelihood)
            kl = kl_per_dimension(mu, logvar).sum(1)
            return -iwae_bound(log_w).mean(), ElboTerms(recon + hp.beta * kl, recon, kl)
        out = self.net(x)
        terms = elbo_loss(out.logits, x, out.mu, out.logvar, hp.beta, hp.likelihood)
        kl_term = (
            free_bits_kl(out.mu, out.logvar, hp.free_bits)
            if hp.free_bits > 0
            else (terms.kl.mean())
        )
        return terms.recon.mean() + self.current_beta() * kl_term, terms

    def on_train_start(self) -> None:
        # the cyclical schedule's length, read once: Lightning recomputes it on each access
        self._total_steps = int(self.trainer.estimated_stepping_batches)

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
        self.epoch_means["train_means"].update(torch.stack(terms))
        if self.global_step % self.trainer.log_every_n_steps == 0:  # only when it is shown
            for term, values in zip(TERMS, terms, strict=True):
                self.log(f"train_step/{term}", values.mean(), prog_bar=True)
            self.log("train_step/beta", self.current_beta())
        return loss

    def _eval_step(self, batch, split: str) -> None:
        x, _ = batch
        out = self.net(x)
        hp = self.hparams
        terms = elbo_loss(out.logits, x, out.mu, out.logvar, hp.beta, hp.likelihood)
        self.epoch_means[f"{split}_means"].update(torch.stack(terms))
        if split == "val":
            self.latent_stats.update(out.mu, out.logvar)

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
            active = (stats["mu_variance"] > ACTIVE_UNIT_THRESHOLD).sum()
            self.log("val/active_units", active.float())
            for j, value in enumerate(stats["kl_per_dim"]):
                self.log(f"val/kl_dim/{j}", value)
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
