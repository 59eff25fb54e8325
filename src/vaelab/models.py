"""Variational autoencoder networks: plain ``torch.nn`` modules, no Lightning."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class VAEOutput(NamedTuple):
    """What ``VAE.forward`` returns.

    logits: [B, *input_shape] decoder output before the sigmoid (Bernoulli logits).
    mu, logvar: [B, latent_dim] parameters of q(z|x) = N(mu, exp(logvar)).
    z: [B, latent_dim] the reparameterized sample that was decoded.
    """

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by ReLU."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """MLP VAE (Kingma & Welling 2014). Default: 784-256-256-32, decoder mirrored.

    Images are [B, *input_shape] with pixels in [0, 1]; the encoder flattens them.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (256, 256),
        latent_dim: int = 32,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        input_dim = math.prod(self.input_shape)
        hidden_dims = list(hidden_dims)
        self.encoder = mlp([input_dim, *hidden_dims])
        # One layer yields mu and logvar together: one matmul instead of two.
        self.to_posterior = nn.Linear(hidden_dims[-1], 2 * latent_dim)
        self.decoder = nn.Sequential(
            mlp([latent_dim, *reversed(hidden_dims)]), nn.Linear(hidden_dims[0], input_dim)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, *input_shape] -> (mu, logvar), each [B, latent_dim]."""
        h = self.encoder(x.flatten(1))
        mu, logvar = self.to_posterior(h).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I); shapes [B, latent_dim]."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> Bernoulli logits [B, *input_shape]."""
        return self.decoder(z).view(-1, *self.input_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> pixel means in [0, 1], [B, *input_shape] (sigmoid of the logits)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode_logits(z), mu, logvar, z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images decoded from z ~ N(0, I): [n, *input_shape] in [0, 1]."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z)
