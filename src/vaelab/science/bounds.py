"""Bounds on log p(x) and their terms, as pure functions of tensors. Nats per image.

Shapes: images x [B, *image]; posterior parameters mu, logvar [B, D] of
q(z|x) = N(mu, diag(exp(logvar))); K samples of z per image [B, K, D].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


class ElboTerms(NamedTuple):
    """Per-image terms [B] in nats: loss = recon + beta * kl (the negative beta-ELBO)."""

    loss: Tensor
    recon: Tensor
    kl: Tensor


def kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, [B, D] in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, [B]."""
    return kl_per_dimension(mu, logvar).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension: [..., D] -> [...] nats."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension, in nats (broadcasting)."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(-1)


def free_bits_kl(kl_per_dim: Tensor, free_bits: float) -> Tensor:
    """The KL term of the free-bits objective (Kingma et al. 2016), a scalar in nats per image:
    sum_j max(free_bits, KL_j), KL_j being part j's KL averaged over the batch
    (kl_per_dim [B, J]: J latent dimensions, or one column for a prior that does not factorize,
    whose threshold the caller then multiplies by the latent size). Parts below ``free_bits``
    get no gradient towards the prior."""
    return kl_per_dim.mean(0).clamp(min=free_bits).sum()


def iwae_bound(log_weights: Tensor) -> Tensor:
    """The importance-weighted bound log (1/K) sum_k w_k (Burda et al. 2015), [B] in nats,
    from log weights [B, K]. K = 1 gives the ELBO."""
    return torch.logsumexp(log_weights, -1) - math.log(log_weights.shape[-1])
