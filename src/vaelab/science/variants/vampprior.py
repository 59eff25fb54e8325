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
from vaelab.science.bounds import LOG_2PI, log_normal
from vaelab.science.distributions import Latents, draw_normal
from vaelab.science.variants.vae import VAE


class MixturePrior:
    """p(z) = (1/K) sum_k N(z; mu_k, diag(exp(logvar_k))) of one latent group; mu, logvar
    [K, D]. Written out rather than as ``torch.distributions.MixtureSameFamily`` for seeded
    draws and for a log density that costs about one small linear layer per z (below)."""

    # the error (nats) allowed from the rounding of the expanded form
    TOLERANCE = 1e-4

    def __init__(self, mu: Tensor, logvar: Tensor, group: str = "z") -> None:
        self.mu, self.logvar, self.group = mu, logvar, group
        precision = torch.exp(-logvar)
        const = (mu.square() * precision + logvar).sum(-1) + mu.shape[-1] * LOG_2PI  # [K]
        # -0.5 [z^2 . (1/s^2) - 2 z . (m/s^2) + const] = [z^2, z, 1] @ weights: [2D + 1, K]
        self.weights = -0.5 * torch.cat([precision.T, -2 * (mu * precision).T, const[None]])
        # for a bound on the expanded form's rounding error: the largest precision of each
        # dimension [D] and the largest sum of m^2/s^2 [] over components
        self.max_precision = precision.amax(0)
        self.max_scaled_mean = (mu.square() * precision).sum(-1).amax()

    def _exact(self, z: Tensor, k: Tensor | None = None) -> Tensor:
        """log N(z; mu_k, s_k) by differences (no cancellation): z [N, D] and one component
        per z, k [N] -> [N]; all K components when k is None -> [N, K]."""
        if k is None:
            return log_normal(z.unsqueeze(-2), self.mu, self.logvar)
        return log_normal(z, self.mu[k], self.logvar[k])

    def log_prob(self, z: Latents) -> dict[str, Tensor]:
        """log p(z): z [..., D] -> [...] nats.

        The components' log densities as one matrix product [z^2, z, 1] @ weights, so that the
        cost is that of a small linear layer per z rather than [N, K, D] differences. That
        expanded form cancels large terms when components are narrow (float32 loses up to
        nats where log s^2 < -8), so the largest component of each z is computed again by
        differences. The others' rounding error is below 2 eps (z^2 . max 1/s^2 +
        max sum m^2/s^2) nats each; where their share of the mass times that bound exceeds
        ``TOLERANCE`` (narrow components that overlap), the whole mixture of that z is
        computed by differences."""
        v = z[self.group]
        flat = v.reshape(-1, v.shape[-1])
        features = torch.cat([flat.square(), flat, torch.ones_like(flat[:, :1])], -1)
        approx = features @ self.weights  # [N, K]
        top, k = approx.max(-1)
        # the mass relative to the top component's (in place: this is most of the cost)
        mass = approx.sub_(top.unsqueeze(-1)).exp_().sum(-1)  # >= 1
        total = top + torch.log(mass)
        # the others' share of the mass, and the mixture with the top component exact
        rest = 1 - 1 / mass
        tiny = torch.finfo(rest.dtype).tiny  # no log(0), no NaN gradient
        log_p = torch.logaddexp(self._exact(flat, k), total + torch.log(rest.clamp_min(tiny)))
        eps = torch.finfo(approx.dtype).eps
        bound = 2 * eps * (flat.square() @ self.max_precision + self.max_scaled_mean)
        unsure = rest * torch.expm1(bound) > self.TOLERANCE
        if bool(unsure.any()):
            log_p[unsure] = torch.logsumexp(self._exact(flat[unsure]), -1)
        log_p = log_p - math.log(len(self.mu))
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
