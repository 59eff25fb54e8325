"""The LightningModule: wraps the VAE and its loss, logs exact per-image means per split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from vaelab.losses import ElboTerms, elbo_loss
from vaelab.models import VAE

SPLITS = ("train", "val", "test")
TERMS = ("loss", "recon", "kl")


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
        means = self.sums / self.count
        return dict(zip(TERMS, means, strict=True))


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
        compile: bool = False,
    ) -> None:
        super().__init__()
        input_shape, hidden_dims = list(input_shape), list(hidden_dims)  # plain lists in the ckpt
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = VAE(input_shape, hidden_dims, latent_dim)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epoch_means = nn.ModuleDict({f"{split}_means": EpochMeans() for split in SPLITS})

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """Per-image (loss, recon, kl) [B] for one batch, one z sample each."""
        out = self.net(x)
        return elbo_loss(
            out.logits, x, out.mu, out.logvar, self.hparams.beta, self.hparams.likelihood
        )

    def configure_model(self) -> None:
        if self.hparams.compile:  # in place: parameter names, hence checkpoints, stay the same
            self.net.compile()

    def _step(self, batch, split: str) -> ElboTerms:
        x, _ = batch
        terms = self.elbo_terms(x)
        self.epoch_means[f"{split}_means"].update(torch.stack(terms))
        return terms

    def _log_epoch(self, split: str) -> None:
        metric = self.epoch_means[f"{split}_means"]
        if metric.update_count:  # compute() reduces over ranks under DDP
            for term, value in metric.compute().items():
                self.log(f"{split}/{term}", value, prog_bar=term == "loss")
        metric.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        terms = self._step(batch, "train")
        loss = terms.loss.mean()
        if self.global_step % self.trainer.log_every_n_steps == 0:  # only when it is shown
            for term, values in zip(TERMS, terms, strict=True):
                self.log(f"train_step/{term}", values.mean(), prog_bar=True)
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
