"""The standard VAE (Kingma & Welling 2014) and the interface every variant keeps.

A variant is one ``nn.Module`` file in this folder: subclass ``VAE`` and override what
differs (a new prior overrides ``log_prior``, ``kl`` and ``sample_prior``). Everything
else in vaelab (the objectives, validation, the NLL, the figures, sample.py) uses only this
interface:

- ``encode(x) -> (mu, logvar)``: q(z|x) = N(mu, diag(exp(logvar))), x [B, *input_shape],
  mu and logvar [B, latent_dim].
- ``decode_logits(z) -> logits``: z [N, latent_dim] -> [N, *input_shape], the parameters of
  p(x|z) for ``self.likelihood`` (a ``vaelab.science.likelihoods.Likelihood``);
  ``decode(z)``: what the figures show (pixel means in [0, 1]).
- ``log_prior(z)``: log p(z), z [..., latent_dim] -> [...] nats.
- ``sample_prior(n, generator) -> z [n, latent_dim]``.
- ``kl(mu, logvar, z) -> [B]``: KL(q(z|x) || p(z)) in nats, in closed form where there is
  one, else estimated from the samples z [B, latent_dim] or [B, S, latent_dim];
  ``kl_per_dimension(mu, logvar)``: [B, latent_dim] when the prior factorizes over
  dimensions, else None.

From these: ``forward(x)`` (one reparameterized sample), ``elbo(x)`` (per-image recon and KL),
``log_px_given_z(z, x)`` and ``log_importance_weights(x, k)`` (the IWAE bound and the NLL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from vaelab.science.bounds import (
    kl_divergence,
    kl_per_dimension,
    log_standard_normal,
    posterior_samples,
)
from vaelab.science.fast_linear import OneDNNLinear, choose_onednn_linear, linear_shapes
from vaelab.science.likelihoods import get_likelihood
from vaelab.science.networks import encoder_decoder


class VAEOutput(NamedTuple):
    """What ``VAE.forward`` returns.

    logits: [B, *input_shape] decoder output (parameters of p(x|z)).
    mu, logvar: [B, latent_dim] parameters of q(z|x) = N(mu, exp(logvar)).
    z: [B, latent_dim] the reparameterized sample that was decoded.
    """

    logits: Tensor
    mu: Tensor
    logvar: Tensor
    z: Tensor


class ElboParts(NamedTuple):
    """``VAE.elbo``: per-image recon = -log p(x|z) and kl [B] (nats), and q's mu, logvar."""

    recon: Tensor
    kl: Tensor
    mu: Tensor
    logvar: Tensor


class VAE(nn.Module):
    """VAE with a standard normal prior. Default: MLP 784-256-256-32, decoder mirrored.

    ``architecture``: ``mlp`` (``hidden_dims`` are layer widths) or ``conv`` (two stride-2
    convolutions with ``hidden_dims`` = [c1, c2] channels). ``likelihood``: ``bernoulli``,
    ``gaussian`` or ``continuous_bernoulli`` (``vaelab.science.likelihoods``).
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
        onednn_linear: bool | str = True,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.likelihood = get_likelihood(likelihood)
        if onednn_linear == "auto":  # the layers' sizes from a copy on the meta device
            with torch.device("meta"):
                shapes = encoder_decoder(architecture, self.input_shape, hidden_dims, latent_dim)
            layers = linear_shapes(nn.ModuleList(shapes[:2])) + [(shapes[2], 2 * latent_dim)]
            onednn_linear = choose_onednn_linear(layers, 128)[0]
        self.linear_cls = OneDNNLinear if onednn_linear else nn.Linear
        self.encoder, self.decoder, features = encoder_decoder(
            architecture, self.input_shape, hidden_dims, latent_dim, batch_norm, self.linear_cls
        )
        # One layer yields mu and logvar together: one matmul instead of two.
        self.to_posterior = self.linear_cls(features, 2 * latent_dim)

    # --- the posterior and the decoder ---------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, *input_shape] -> (mu, logvar), each [B, latent_dim]."""
        mu, logvar = self.to_posterior(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I); shapes [B, latent_dim]."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode_logits(self, z: Tensor) -> Tensor:
        """z [N, latent_dim] -> logits [N, *input_shape]."""
        return self.decoder(z).view(-1, *self.input_shape)

    def decode(self, z: Tensor) -> Tensor:
        """z [N, latent_dim] -> pixel means in [0, 1], [N, *input_shape]."""
        return self.likelihood.mean(self.decode_logits(z))

    # --- the prior: what a variant of the prior overrides --------------------------------

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; 0, I): z [..., latent_dim] -> [...] nats."""
        return log_standard_normal(z)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws z ~ N(0, I): [n, latent_dim]."""
        device = next(self.parameters()).device
        drawn_on = generator.device if generator is not None else device
        return torch.randn(n, self.latent_dim, generator=generator, device=drawn_on).to(device)

    def kl(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, I)) in closed form, [B] nats (the samples z are not needed)."""
        return kl_divergence(mu, logvar)

    def kl_per_dimension(self, mu: Tensor, logvar: Tensor) -> Tensor | None:
        """KL of each latent dimension to N(0, 1), [B, latent_dim] nats."""
        return kl_per_dimension(mu, logvar)

    # --- derived: bounds on log p(x) -----------------------------------------------------

    def forward(self, x: Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode_logits(z), mu, logvar, z)

    def elbo(self, x: Tensor) -> ElboParts:
        """The ELBO's terms for one z ~ q(z|x) per image: recon = -log p(x|z), kl, [B] nats."""
        out = self(x)
        recon = -self.likelihood.log_prob(out.logits, x)
        return ElboParts(recon, self.kl(out.mu, out.logvar, out.z), out.mu, out.logvar)

    def log_px_given_z(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) of K decodings per image: z [B, K, latent_dim], x [B, *input_shape]
        -> [B, K] nats."""
        b, k, d = z.shape
        logits = self.decode_logits(z.reshape(b * k, d)).view(b, k, *self.input_shape)
        return self.likelihood.log_prob(logits, x)

    def log_importance_weights(
        self,
        x: Tensor,
        k: int,
        posterior: tuple[Tensor, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x) for k samples z_k ~ q(z|x) per image,
        [B, k] nats; ``posterior``: (mu, logvar) of x when already encoded."""
        return log_importance_weights(self, x, k, posterior, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images decoded from z ~ p(z): [n, *input_shape] in [0, 1]."""
        return self.decode(self.sample_prior(n, generator))


def log_importance_weights(
    model,
    x: Tensor,
    k: int,
    posterior: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x), [B, k] nats, for any model
    with ``encode``, ``log_px_given_z`` and ``log_prior`` (a ``VAE``, or a test's exact model)."""
    mu, logvar = posterior if posterior is not None else model.encode(x)
    z, log_q = posterior_samples(mu, logvar, k, generator)
    return model.log_px_given_z(z, x) + model.log_prior(z) - log_q
