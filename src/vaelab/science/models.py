"""Variational autoencoder networks: plain ``torch.nn`` modules, no Lightning."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from vaelab.science.fast_linear import OneDNNLinear


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


ARCHITECTURES = ("mlp", "conv")


def mlp(
    sizes: Sequence[int], batch_norm: bool = False, linear: type[nn.Linear] = nn.Linear
) -> nn.Sequential:
    """``linear`` layers of the given sizes, each followed by (BatchNorm1d and) ReLU."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append(linear(n_in, n_out))
        layers += [nn.BatchNorm1d(n_out)] if batch_norm else []
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """MLP VAE (Kingma & Welling 2014). Default: 784-256-256-32, decoder mirrored.

    Images are [B, *input_shape] with pixels in [0, 1]; the encoder flattens them.
    Subclasses change ``encoder`` (image -> [B, features]) and ``decoder`` (z -> logits).
    ``onednn_linear``: fp32 linear layers on the CPU through oneDNN (``vaelab.science.fast_linear``;
    same parameters and results, faster where MKL does not use AVX-512); off: ``nn.Linear``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (256, 256),
        latent_dim: int = 32,
        batch_norm: bool = False,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.linear_cls = OneDNNLinear if onednn_linear else nn.Linear
        hidden_dims = list(hidden_dims)
        features = self.build(hidden_dims, batch_norm)
        # One layer yields mu and logvar together: one matmul instead of two.
        self.to_posterior = self.linear_cls(features, 2 * latent_dim)

    def build(self, hidden_dims: list[int], batch_norm: bool) -> int:
        """Create ``encoder`` and ``decoder``; return the encoder's output width."""
        input_dim = math.prod(self.input_shape)
        self.encoder = nn.Sequential(
            nn.Flatten(), mlp([input_dim, *hidden_dims], batch_norm, self.linear_cls)
        )
        self.decoder = nn.Sequential(
            mlp([self.latent_dim, *reversed(hidden_dims)], batch_norm, self.linear_cls),
            self.linear_cls(hidden_dims[0], input_dim),
        )
        return hidden_dims[-1]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, *input_shape] -> (mu, logvar), each [B, latent_dim]."""
        h = self.encoder(x)
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


class ConvVAE(VAE):
    """Convolutional VAE for 28x28 images: two stride-2 convolutions (``hidden_dims`` are
    their channel counts, e.g. [32, 64]) down to 7x7, mirrored by transposed convolutions."""

    def build(self, hidden_dims: list[int], batch_norm: bool) -> int:
        channels, height, width = self.input_shape
        if len(hidden_dims) != 2 or height % 4 or width % 4:
            raise ValueError(
                "the conv architecture needs hidden_dims=[c1, c2] and H, W divisible by 4"
            )
        c1, c2 = hidden_dims
        self._grid = (c2, height // 4, width // 4)

        def block(conv: nn.Module, n: int) -> list[nn.Module]:
            return [conv, *([nn.BatchNorm2d(n)] if batch_norm else []), nn.ReLU()]

        self.encoder = nn.Sequential(
            *block(nn.Conv2d(channels, c1, 4, 2, 1), c1),
            *block(nn.Conv2d(c1, c2, 4, 2, 1), c2),
            nn.Flatten(),
        )
        self.decoder = nn.Sequential(
            self.linear_cls(self.latent_dim, math.prod(self._grid)),
            nn.ReLU(),
            nn.Unflatten(1, self._grid),
            *block(nn.ConvTranspose2d(c2, c1, 4, 2, 1), c1),
            nn.ConvTranspose2d(c1, channels, 4, 2, 1),
        )
        return math.prod(self._grid)


def build_network(
    architecture: str,
    input_shape: Sequence[int],
    hidden_dims: Sequence[int],
    latent_dim: int,
    batch_norm: bool = False,
    onednn_linear: bool = True,
) -> VAE:
    """The VAE named by ``architecture`` ('mlp' or 'conv')."""
    networks = {"mlp": VAE, "conv": ConvVAE}
    if architecture not in networks:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    return networks[architecture](input_shape, hidden_dims, latent_dim, batch_norm, onednn_linear)
