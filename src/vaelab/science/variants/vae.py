"""The standard VAE (Kingma & Welling 2014): an MLP or convolutional encoder to a diagonal
Gaussian q(z|x), a standard normal prior and a decoder to p(x|z). The seam it implements, and
how a variant changes the posterior, the prior or the latents, is in ``base.py``; a variant of
the prior or the posterior usually subclasses ``VAE`` to keep its networks; a hierarchy starts
from ``base.LatentVariableModel``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.science.distributions import GaussianPosterior, Latents, StandardNormalPrior
from vaelab.science.fast_linear import OneDNNLinear, choose_onednn_linear, linear_shapes
from vaelab.science.likelihoods import get_likelihood
from vaelab.science.networks import encoder_decoder
from vaelab.science.variants.base import LatentVariableModel


class VAE(LatentVariableModel):
    """VAE with a standard normal prior. Default: MLP 784-256-256-32, decoder mirrored.

    ``architecture``: ``mlp`` (``hidden_dims`` are layer widths) or ``conv`` (two stride-2
    convolutions with ``hidden_dims`` = [c1, c2] channels); ``activation``: of the hidden
    layers (``vaelab.science.networks.ACTIVATIONS``). ``likelihood``: a name registered in
    ``vaelab.science.likelihoods`` (``bernoulli``, ``gaussian``, ``continuous_bernoulli``,
    ``learned_gaussian``, ...), built with ``likelihood_args``.
    ``onednn_linear``: fp32 linear layers on the CPU through oneDNN (same parameters and
    results; ``vaelab.science.fast_linear``); off: ``nn.Linear``; ``"auto"``: the faster of
    the two on this CPU for these layers at batch 128 (train.py decides at the run's batch
    size before building: ``vaelab.runs.linear_path``).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (256, 256),
        latent_dim: int = 32,
        architecture: str = "mlp",
        batch_norm: bool = False,
        likelihood: str = "bernoulli",
        likelihood_args: dict | None = None,
        onednn_linear: bool | str = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int):
            raise VaelabError(
                f"model.latent_dim={latent_dim} must be one integer for {type(self).__name__} "
                "(a list of sizes is for a variant with several stochastic layers)"
            )
        self.input_shape = tuple(input_shape)
        self.latent_sizes = {"z": latent_dim}
        self.likelihood = get_likelihood(likelihood, self.input_shape, likelihood_args)
        self.activation = activation
        if onednn_linear == "auto":  # the layers' sizes from a copy on the meta device
            with torch.device("meta"):
                shapes = encoder_decoder(architecture, self.input_shape, hidden_dims, latent_dim)
            layers = linear_shapes(nn.ModuleList(shapes[:2])) + [(shapes[2], 2 * latent_dim)]
            onednn_linear = choose_onednn_linear(layers, 128)[0]
        self.linear_cls = OneDNNLinear if onednn_linear else nn.Linear
        self.encoder, self.decoder, features = encoder_decoder(
            architecture,
            self.input_shape,
            hidden_dims,
            latent_dim,
            batch_norm,
            self.linear_cls,
            activation,
        )
        # One layer yields mu and logvar together: one matmul instead of two.
        self.to_posterior = self.linear_cls(features, 2 * latent_dim)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder network: x [B, *input_shape] -> (mu, logvar), each [B, latent_dim]."""
        mu, logvar = self.to_posterior(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    def posterior(self, x: Tensor) -> GaussianPosterior:
        """q(z|x) = N(mu, diag(exp(logvar)))."""
        return GaussianPosterior(*self.encode(x))

    def prior(self) -> StandardNormalPrior:
        """p(z) = N(0, I)."""
        return StandardNormalPrior(self.latent_sizes, self.to_posterior.weight)

    def decode_logits(self, z: Latents) -> Tensor:
        """z {"z": [N, latent_dim]} -> logits [N, *input_shape]."""
        return self.decoder(z["z"]).view(-1, *self.input_shape)
