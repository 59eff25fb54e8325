"""The beta-weighted ELBO as pure functions of tensors. All values are nats per image [B]."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "gaussian")


class ElboTerms(NamedTuple):
    """Per-image terms [B] in nats: loss = recon + beta * kl (the negative beta-ELBO)."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def reconstruction_loss(
    logits: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli"
) -> torch.Tensor:
    """-log p(x|z) summed over pixels, [B].

    bernoulli: binary cross-entropy of x against sigmoid(logits), computed from the logits
      (stable, and no log clamp needed); x may be any value in [0, 1].
    gaussian: squared error between x and sigmoid(logits), summed over pixels: the reference
      script's MSE variant, equal to -log N(x; mean, 1/2) up to a constant per pixel.
    """
    if likelihood == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif likelihood == "gaussian":
        per_pixel = F.mse_loss(torch.sigmoid(logits), x, reduction="none")
    else:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return per_pixel.flatten(1).sum(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, [B]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def elbo_loss(
    logits: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
    likelihood: str = "bernoulli",
) -> ElboTerms:
    """Negative beta-ELBO per image: recon + beta * kl, each [B] in nats."""
    recon = reconstruction_loss(logits, x, likelihood)
    kl = kl_divergence(mu, logvar)
    return ElboTerms(recon + beta * kl, recon, kl)
