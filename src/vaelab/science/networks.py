"""Encoder and decoder networks of the variants: an MLP and a small convolutional pair."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError

ARCHITECTURES = ("mlp", "conv")


class Gate(nn.Module):
    """The gated linear unit of Tomczak & Welling (2018, after Dauphin et al. 2017): the
    layer before it is twice as wide, [a, b] = W x + c, and h = a * sigmoid(b), which is
    (W1 x + c1) * sigmoid(W2 x + c2) with W = [W1; W2] (one matrix product, not two)."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        return a * torch.sigmoid(b)


# the hidden layers' nonlinearity (Burda et al. 2016 use tanh). ``gated`` is a name here
# rather than a separate key (model.gated) because it replaces the nonlinearity: the paper's
# gated layer has no other activation, so gated + tanh would be a third model nobody uses, and
# every variant that passes ``activation`` to ``mlp`` gets it with no change of its signature.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gated": Gate,
}


def activation_layer(name: str) -> nn.Module:
    """A new module of the activation called ``name`` (one of ``ACTIVATIONS``); for
    ``gated`` the layer before it must be ``width_factor(name)`` times as wide."""
    if name not in ACTIVATIONS:
        raise VaelabError(f"model.activation={name!r} must be one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def width_factor(activation: str) -> int:
    """How many outputs the layer before ``activation`` has per hidden unit: 2 for ``gated``
    (value and gate), 1 otherwise."""
    return 2 if activation == "gated" else 1


def mlp(
    sizes: Sequence[int],
    batch_norm: bool = False,
    linear: type[nn.Linear] = nn.Linear,
    activation: str = "relu",
) -> nn.Sequential:
    """``linear`` layers of the given sizes, each followed by (BatchNorm1d and) the
    activation; ``gated``: each layer has twice the outputs, halved by the gate."""
    layers: list[nn.Module] = []
    factor = width_factor(activation)
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append(linear(n_in, factor * n_out))
        layers += [nn.BatchNorm1d(factor * n_out)] if batch_norm else []
        layers.append(activation_layer(activation))
    return nn.Sequential(*layers)


def mlp_pair(
    input_shape: Sequence[int],
    hidden_dims: Sequence[int],
    latent_dim: int,
    batch_norm: bool,
    linear: type[nn.Linear],
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module, int]:
    """(encoder: image [B, *input_shape] -> [B, hidden_dims[-1]], decoder: z [B, latent_dim]
    -> flat logits [B, prod(input_shape)], the encoder's output width); decoder mirrored."""
    input_dim = math.prod(input_shape)
    encoder = nn.Sequential(
        nn.Flatten(), mlp([input_dim, *hidden_dims], batch_norm, linear, activation)
    )
    decoder = nn.Sequential(
        mlp([latent_dim, *reversed(hidden_dims)], batch_norm, linear, activation),
        linear(hidden_dims[0], input_dim),
    )
    return encoder, decoder, hidden_dims[-1]


def conv_pair(
    input_shape: Sequence[int],
    hidden_dims: Sequence[int],
    latent_dim: int,
    batch_norm: bool,
    linear: type[nn.Linear],
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module, int]:
    """Two stride-2 convolutions (``hidden_dims`` = their channels [c1, c2]) down to H/4 x W/4,
    mirrored by transposed convolutions: (encoder, decoder, encoder output width)."""
    channels, height, width = input_shape
    if width_factor(activation) != 1:
        raise VaelabError(
            f"model.activation={activation!r} is a layer of the mlp architecture; the conv "
            "architecture takes a pointwise one: relu, tanh, elu, leaky_relu"
        )
    if len(hidden_dims) != 2 or height % 4 or width % 4:
        raise VaelabError(
            "the conv architecture needs hidden_dims=[c1, c2] and H, W divisible by 4"
        )
    c1, c2 = hidden_dims
    grid = (c2, height // 4, width // 4)

    def block(conv: nn.Module, n: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(n)] if batch_norm else []
        return [conv, *norm, activation_layer(activation)]

    encoder = nn.Sequential(
        *block(nn.Conv2d(channels, c1, 4, 2, 1), c1),
        *block(nn.Conv2d(c1, c2, 4, 2, 1), c2),
        nn.Flatten(),
    )
    decoder = nn.Sequential(
        linear(latent_dim, math.prod(grid)),
        activation_layer(activation),
        nn.Unflatten(1, grid),
        *block(nn.ConvTranspose2d(c2, c1, 4, 2, 1), c1),
        nn.ConvTranspose2d(c1, channels, 4, 2, 1),
    )
    return encoder, decoder, math.prod(grid)


NETWORKS = {"mlp": mlp_pair, "conv": conv_pair}


def encoder_decoder(
    architecture: str,
    input_shape: Sequence[int],
    hidden_dims: Sequence[int],
    latent_dim: int,
    batch_norm: bool = False,
    linear: type[nn.Linear] = nn.Linear,
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module, int]:
    """The (encoder, decoder, encoder width) of ``architecture`` (one of ``ARCHITECTURES``)
    with the hidden layers' ``activation`` (one of ``ACTIVATIONS``)."""
    if architecture not in NETWORKS:
        raise VaelabError(
            f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    return NETWORKS[architecture](
        input_shape, list(hidden_dims), latent_dim, batch_norm, linear, activation
    )
