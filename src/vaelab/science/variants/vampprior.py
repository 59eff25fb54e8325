"""VampPrior VAE (Tomczak & Welling 2018): the prior is the mixture of the variational
posteriors of K learnable pseudo-inputs u_1..u_K,

    p(z) = (1/K) sum_k q(z | u_k).

Its KL to q(z|x) has no closed form, so ``kl`` is the one-sample Monte Carlo estimate
log q(z|x) - log p(z) at the decoded z (unbiased; ``elbo`` and the objectives use it). The
prior does not factorize over latent dimensions: ``kl_per_dimension`` is None.

    python train.py model=vampprior model.num_pseudo_inputs=500
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.science.bounds import LOG_2PI, log_normal
from vaelab.science.variants.vae import VAE


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

    def log_prior(self, z: Tensor) -> Tensor:
        """log (1/K) sum_k N(z; mu_k, exp(logvar_k)): z [..., D] -> [...] nats.

        Each component's log density is expanded into two matrix products,
        -0.5 [z^2 . (1/s^2) - 2 z . (m/s^2) + sum(m^2/s^2 + log s^2) + D log 2 pi],
        so that the cost is that of one small linear layer per z, not [N, K, D] differences."""
        mu, logvar = self.components()
        precision = torch.exp(-logvar)  # [K, D]
        flat = z.reshape(-1, z.shape[-1])
        quad = flat.square() @ precision.T - 2 * flat @ (mu * precision).T  # [N, K]
        const = (mu.square() * precision + logvar).sum(-1) + z.shape[-1] * LOG_2PI  # [K]
        log_components = -0.5 * (quad + const)
        log_p = torch.logsumexp(log_components, -1) - math.log(len(mu))
        return log_p.view(z.shape[:-1])

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws from the mixture: a uniform component k, then z ~ q(z | u_k)."""
        mu, logvar = self.components()
        drawn_on = generator.device if generator is not None else mu.device
        k = torch.randint(len(mu), (n,), generator=generator, device=drawn_on).to(mu.device)
        eps = torch.randn(n, self.latent_dim, generator=generator, device=drawn_on)
        return mu[k] + torch.exp(0.5 * logvar[k]) * eps.to(mu.device)

    def kl(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """log q(z|x) - log p(z) averaged over the samples z [B, D] (one per image) or
        [B, S, D]: the KL estimated by Monte Carlo, [B] nats."""
        zs = z if z.dim() == 3 else z.unsqueeze(1)
        log_q = log_normal(zs, mu.unsqueeze(1), logvar.unsqueeze(1))
        return (log_q - self.log_prior(zs)).mean(1)

    def kl_per_dimension(self, mu: Tensor, logvar: Tensor) -> None:
        """The mixture prior does not factorize over dimensions."""
        return None
