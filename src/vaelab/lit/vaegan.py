"""A VAE with an adversarial term on its samples (after Larsen et al. 2016, "Autoencoding
beyond pixels using a learned similarity metric"): an example of a LightningModule subclass
with a second optimizer, written as Lightning's docs write a GAN (manual optimization,
``self.optimizers()``, ``self.manual_backward``, ``self.clip_gradients``).

Simplified from the paper: the VAE keeps its own objective (``model.objective``, the ELBO by
default) as the reconstruction term, and the discriminator, a small MLP on images, learns to
tell training images from decoded prior samples; the VAE is also trained to fool it,
weighted ``adv_weight`` (non-saturating GAN loss). ``configs/model/vaegan.yaml``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.lit.module import VAELitModule


class VAEGAN(VAELitModule):
    """``VAELitModule`` plus a discriminator D(x) -> logit and its optimizer.

    ``adv_weight``: the adversarial term's weight in the VAE's loss (nats per image are
    summed over pixels, so a weight of a few nats is small); ``disc_hidden``: D's hidden
    width; ``disc_lr``: D's Adam learning rate; ``clip_val``: the gradient norm both
    optimizers clip to (the trainer's ``gradient_clip_val`` is for automatic optimization;
    train.py sets it aside for a module that optimizes manually). The other arguments are
    ``VAELitModule``'s.
    """

    def __init__(
        self,
        adv_weight: float = 1.0,
        disc_hidden: int = 256,
        disc_lr: float = 2e-4,
        clip_val: float | None = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        pixels = math.prod(self.net.input_shape)
        self.discriminator = nn.Sequential(
            nn.Flatten(),
            nn.Linear(pixels, disc_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(disc_hidden, 1),
        )

    def training_step(self, batch, batch_idx: int) -> dict:
        x, _ = batch
        opt_vae, opt_d = self.optimizers()
        ones = torch.ones(len(x), 1, device=x.device)
        clip = self.hparams.clip_val

        # the VAE: its objective, and decoded prior samples that D takes for real
        out = self.training_loss(x)  # records train/loss, recon, kl for the epoch
        z = self.net.prior().sample(len(x), self.noise)
        fake = self.net.decode(z)
        fool = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        vae_loss = out.loss + self.hparams.adv_weight * fool
        opt_vae.zero_grad()
        self.manual_backward(vae_loss)
        if clip:
            self.clip_gradients(opt_vae, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_vae.step()

        # the discriminator: training images against the samples
        logits_real = self.discriminator(x)
        logits_fake = self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            logits_real, ones
        ) + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        if clip:
            self.clip_gradients(opt_d, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_d.step()

        self.log_dict(
            {"train/d_loss": d_loss.detach(), "train/fool": fool.detach()},
            on_step=False,
            on_epoch=True,
            batch_size=len(x),
        )
        return {"loss": vae_loss.detach()}

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        scheduler = self.lr_schedulers()  # manual optimization: stepped here, once an epoch
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if "val/loss" in self.trainer.callback_metrics:
                scheduler.step(self.trainer.callback_metrics["val/loss"])
        elif scheduler is not None:
            scheduler.step()

    def configure_optimizers(self):
        vae = super().configure_optimizers()  # model.optimizer (and model.scheduler)
        d_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.hparams.disc_lr, betas=(0.5, 0.999)
        )
        return [vae if isinstance(vae, dict) else {"optimizer": vae}, {"optimizer": d_optimizer}]
