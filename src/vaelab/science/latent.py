"""Latent-space maths used by the figures: encoding a data set, PCA, interpolation."""

from __future__ import annotations

import torch
from torch import nn

from vaelab.science.distributions import flatten


@torch.no_grad()
def encode_dataset(
    net: nn.Module, loader, max_items: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The point summaries of q(z|x) (``q.mean``, all latent groups side by side)
    [N, latent_dim] and labels [N] of the batches (x, y) of ``loader``."""
    mus, labels, seen = [], [], 0
    for x, y in loader:
        x = x.to(next(net.parameters()).device)
        mu = flatten(net.posterior(x).mean)
        mus.append(mu.float().cpu())
        labels.append(y.cpu())
        seen += len(y)
        if max_items is not None and seen >= max_items:
            break
    mu, y = torch.cat(mus), torch.cat(labels)
    return (mu[:max_items], y[:max_items]) if max_items is not None else (mu, y)


def project_2d(points: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, 2]: the points themselves when D <= 2, else their first two principal
    components (PCA: the top two eigenvectors of the centred points' D x D scatter matrix,
    a tenth of the time of an SVD of the N x D points)."""
    if points.shape[1] <= 2:
        return torch.nn.functional.pad(points, (0, 2 - points.shape[1]))
    centred = points - points.mean(0, keepdim=True)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    return centred @ vectors[:, [-1, -2]]


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Linear path from z0 to z1 (each [D]) in ``steps`` points, endpoints included: [steps, D]."""
    t = torch.linspace(0, 1, steps, device=z0.device, dtype=z0.dtype).unsqueeze(1)
    return (1 - t) * z0 + t * z1


def latent_group(sizes: dict[str, int], dim: int) -> tuple[str, int]:
    """(group, index within it) of dimension ``dim`` of the flattened latent vector, whose
    groups of ``sizes`` lie side by side in order."""
    start = 0
    for group, size in sizes.items():
        if dim < start + size:
            return group, dim - start
        start += size
    raise IndexError(f"latent dimension {dim} is beyond the {start} of {sizes}")


def describe_groups(sizes: dict[str, int]) -> str:
    """How the flattened latent vector is made up, for figure titles: ``z1 (dims 0-99),
    z2 (dims 100-149)``; empty for one group."""
    if len(sizes) < 2:
        return ""
    parts, start = [], 0
    for group, size in sizes.items():
        parts.append(f"{group} (dims {start}-{start + size - 1})")
        start += size
    return ", ".join(parts)
