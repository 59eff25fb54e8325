"""The LightningModule: wraps the VAE and its loss, logs exact per-image means per split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from vaelab.losses import ElboTerms, elbo_loss
from vaelab.models import VAE

SPLITS = ("train", "val", "test")
TERMS = ("loss", "recon", "kl")


class VAELitModule(L.LightningModule):
    """Trains ``VAE`` on the negative beta-ELBO.

    Logs ``{split}/loss``, ``{split}/recon`` and ``{split}/kl`` (nats per image) once per epoch:
    the mean over every image of the split, whatever the batch sizes. All constructor
    arguments but the optimizer and scheduler factories are saved in the checkpoint, so
    ``VAELitModule.load_from_checkpoint(path)`` rebuilds the model with no config.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (256, 256),
        latent_dim: int = 32,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        input_shape, hidden_dims = list(input_shape), list(hidden_dims)  # plain lists in the ckpt
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = VAE(input_shape, hidden_dims, latent_dim)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epoch_means = nn.ModuleDict(
            {f"{split}_{term}": MeanMetric() for split in SPLITS for term in TERMS}
        )
        for term in TERMS:  # in checkpoints: a training epoch resumed mid-way logs its full mean
            self.epoch_means[f"train_{term}"].persistent(True)  # (validation restarts from scratch)

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """Per-image (loss, recon, kl) [B] for one batch, one z sample each."""
        out = self.net(x)
        return elbo_loss(
            out.logits, x, out.mu, out.logvar, self.hparams.beta, self.hparams.likelihood
        )

    def _step(self, batch, split: str) -> torch.Tensor:
        x, _ = batch
        terms = self.elbo_terms(x)
        for term, values in zip(TERMS, terms, strict=True):
            self.epoch_means[f"{split}_{term}"].update(values.detach())
        return terms.loss.mean()

    def _log_epoch(self, split: str) -> None:
        for term in TERMS:
            metric = self.epoch_means[f"{split}_{term}"]
            # weight, not update_count: a checkpoint restores the state but not the count
            if metric.weight > 0:  # compute() reduces over ranks under DDP
                self.log(f"{split}/{term}", metric.compute(), prog_bar=term == "loss")
            metric.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }
