"""VampPrior VAE (Tomczak & Welling 2018): the prior is the mixture of the variational
posteriors of K learnable pseudo-inputs u_1..u_K,

    p(z) = (1/K) sum_k q(z | u_k).

A change of the prior only: ``prior()`` returns the mixture. Its KL to q(z|x) has no closed
form, so the seam estimates it by Monte Carlo, and it has no KL per latent dimension.

    python train.py model=vampprior model.num_pseudo_inputs=500
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.science.bounds import LOG_2PI
from vaelab.science.distributions import Latents, draw_normal
from vaelab.science.variants.vae import VAE


class MixturePrior:
    """p(z) = (1/K) sum_k N(z; mu_k, diag(exp(logvar_k))) of one latent group; mu, logvar
    [K, D]. Written out rather than as ``torch.distributions.MixtureSameFamily`` for seeded
    draws and for the log density as two matrix products (below)."""

    def __init__(self, mu: Tensor, logvar: Tensor, group: str = "z") -> None:
        self.mu, self.logvar, self.group = mu, logvar, group
        # per component, in float64: 1/s^2 [K, D], m/s^2 [K, D] and the constant [K]
        mu64, logvar64 = mu.double(), logvar.double()
        self.precision = torch.exp(-logvar64)
        self.scaled_mu = mu64 * self.precision
        dim = mu.shape[-1]
        self.const = (mu64.square() * self.precision + logvar64).sum(-1) + dim * LOG_2PI

    def log_prob(self, z: Latents) -> dict[str, Tensor]:
        """log p(z): z [..., D] -> [...] nats.

        Each component's log density is expanded into two matrix products,
        -0.5 [z^2 . (1/s^2) - 2 z . (m/s^2) + sum(m^2/s^2 + log s^2) + D log 2 pi],
        so that the cost is that of one small linear layer per z rather than [N, K, D]
        differences. In float64: for narrow components the terms are large and cancel
        (float32 loses up to nats where log s^2 < -8); the matrices are small beside the
        decoder's, so the cost stays small."""
        v = z[self.group]
        flat = v.reshape(-1, v.shape[-1]).double()
        quad = flat.square() @ self.precision.T - 2 * flat @ self.scaled_mu.T  # [N, K]
        log_components = (-0.5 * (quad + self.const)).to(v.dtype)
        log_p = torch.logsumexp(log_components, -1) - math.log(len(self.mu))
        return {self.group: log_p.view(v.shape[:-1])}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Latents:
        """n draws: a uniform component k, then z ~ N(mu_k, exp(logvar_k))."""
        drawn_on = generator.device if generator is not None else self.mu.device
        k = torch.randint(len(self.mu), (n,), generator=generator, device=drawn_on)
        k = k.to(self.mu.device)
        eps = draw_normal((n, self.mu.shape[-1]), self.mu, generator)
        return {self.group: self.mu[k] + torch.exp(0.5 * self.logvar[k]) * eps}


class VampPrior(VAE):
    """A ``VAE`` (``vae_args``: its arguments) whose prior is the VampPrior with
    ``num_pseudo_inputs`` pseudo-inputs (images [K, *input_shape], kept in [0, 1] by a hard
    tanh and learned with the rest; initialised near a blank image, ``pseudo_input_mean`` +-
    ``pseudo_input_std``)."""

    def __init__(
        self,
        num_pseudo_inputs: int = 500,
        pseudo_input_mean: float = 0.05,
        pseudo_input_std: float = 0.01,
        **vae_args,
    ) -> None:
        super().__init__(**vae_args)
        if num_pseudo_inputs < 1:
            raise VaelabError(
                f"model.num_pseudo_inputs={num_pseudo_inputs} must be an integer >= 1"
            )
        init = torch.randn(num_pseudo_inputs, *self.input_shape) * pseudo_input_std
        self.pseudo_inputs = nn.Parameter(init + pseudo_input_mean)
        self.pseudo_activation = nn.Hardtanh(0.0, 1.0)

    def components(self) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [K, latent_dim] of q(z | u_k) for the K pseudo-inputs."""
        was_training = self.training
        self.eval()  # batch norm: the pseudo-inputs must not shift the running statistics
        try:
            return self.encode(self.pseudo_activation(self.pseudo_inputs))
        finally:
            self.train(was_training)

    def prior(self) -> MixturePrior:
        return MixturePrior(*self.components())
