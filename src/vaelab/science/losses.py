"""The beta-weighted ELBO as pure functions of tensors. All values are nats per image [B]."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import ContinuousBernoulli

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")


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
    continuous_bernoulli: -log CB(x; logits) (Loaiza-Ganem & Cunningham 2019), the Bernoulli
      term plus the log normalizing constant: a proper density for pixels in [0, 1].
    """
    if likelihood == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif likelihood == "gaussian":
        per_pixel = F.mse_loss(torch.sigmoid(logits), x, reduction="none")
    elif likelihood == "continuous_bernoulli":
        per_pixel = -ContinuousBernoulli(logits=logits).log_prob(x)
    else:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return per_pixel.flatten(1).sum(1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, [B, D] in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, [B]."""
    return kl_per_dimension(mu, logvar).sum(1)


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term of the free-bits objective (Kingma et al. 2016), a scalar in nats per image:
    sum_j max(free_bits, KL_j), KL_j being dimension j's KL averaged over the batch.
    Dimensions below ``free_bits`` get no gradient towards the prior."""
    return kl_per_dimension(mu, logvar).mean(0).clamp(min=free_bits).sum()


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


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension, in nats."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def log_importance_weights(
    logits: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    likelihood: str = "bernoulli",
) -> torch.Tensor:
    """log p(x|z_k) + log p(z_k) - log q(z_k|x) for K samples per image, [K, B] in nats.

    logits [K, B, *image], x [B, *image], z [K, B, D], mu and logvar [B, D].
    """
    k = z.shape[0]
    log_px_z = -reconstruction_loss(
        logits.flatten(0, 1), x.repeat(k, *[1] * (x.dim() - 1)), likelihood
    ).view(k, -1)
    log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    return log_px_z + log_pz - log_normal(z, mu, logvar)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound log (1/K) sum_k w_k (Burda et al. 2015), [B] in nats,
    from log weights [K, B]. K = 1 gives the ELBO."""
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])
