"""VAE with an inverse autoregressive flow posterior (Kingma et al. 2016).

A change of the posterior only: z_0 ~ N(mu, diag(sigma^2)) from the encoder, then T steps

    [m_t, s_t] = MADE_t(z_{t-1}, h),  g_t = sigmoid(s_t),  z_t = g_t * z_{t-1} + (1 - g_t) * m_t

where MADE_t is autoregressive in z (output i sees z_<i, in alternating orders) and h is a
context vector from the encoder. Each step is triangular with diagonal g_t, so

    log q(z_T|x) = log N(z_0; mu, sigma^2) - sum_t sum_i log g_t,i.

Its KL to the prior has no closed form: the seam estimates it by Monte Carlo. The point
summary for figures and statistics is the flow applied to z_0 = mu (q's mean has no closed
form).

    python train.py model=iaf model.flow_steps=2

The masked network is written here (about 30 lines) rather than taken from a flow library
such as zuko: one autoregressive layer with a context, evaluated only in its one-pass
direction, does not justify a dependency that every install would need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.science.distributions import DiagonalGaussian, Latents
from vaelab.science.networks import activation_layer, width_factor
from vaelab.science.variants.vae import VAE


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in]."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveStep(nn.Module):
    """One IAF step: a MADE (Germain et al. 2015) with a context input, one hidden layer of
    ``hidden`` units; output i of (m, s) depends on z's dimensions before i in ``order``."""

    def __init__(self, dim: int, context: int, hidden: int, order: Tensor, activation: str):
        super().__init__()
        # degrees: inputs by their place in ``order``, hidden units cycle through 1..dim-1
        degree_in = torch.empty(dim, dtype=torch.long)
        degree_in[order] = torch.arange(1, dim + 1)
        degree_hidden = torch.arange(hidden) % max(1, dim - 1) + 1
        hidden_mask = degree_hidden[:, None] >= degree_in[None, :]
        # gated: value and gate of each hidden unit, both with the unit's mask
        factor = width_factor(activation)
        self.to_hidden = MaskedLinear(torch.cat([hidden_mask] * factor))
        self.context_to_hidden = nn.Linear(context, factor * hidden)
        out_mask = degree_in[:, None] > degree_hidden[None, :]
        self.to_out = MaskedLinear(torch.cat([out_mask, out_mask]))
        self.context_to_out = nn.Linear(context, 2 * dim)
        self.activation = activation_layer(activation)
        # the gate starts near 1 (sigmoid(2) = 0.88): each step starts near the identity
        nn.init.constant_(self.context_to_out.bias[dim:], 2.0)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """z [..., D], context h [..., C] -> (new z [..., D], log of the gates summed [...])."""
        hidden = self.activation(self.to_hidden(z) + self.context_to_hidden(h))
        m, s = (self.to_out(hidden) + self.context_to_out(h)).chunk(2, dim=-1)
        gate = torch.sigmoid(s)
        return gate * z + (1 - gate) * m, F.logsigmoid(s).sum(-1)


class IAFPosterior:
    """q(z|x): a diagonal Gaussian (mu, logvar [B, D]) through the flow ``steps`` with
    context h [B, C]; the interface of ``vaelab.science.distributions``."""

    def __init__(self, mu: Tensor, logvar: Tensor, h: Tensor, steps: nn.ModuleList) -> None:
        self.base, self.h, self.steps = DiagonalGaussian(mu, logvar), h, steps

    def _flow(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_gates = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for step in self.steps:
            z, log_gate = step(z, h)
            log_gates = log_gates + log_gate
        return z, log_gates

    @property
    def mean(self) -> Latents:
        return {"z": self._flow(self.base.mu, self.h)[0]}

    def rsample(self, k: int | None = None, generator: torch.Generator | None = None):
        z0, log_q0 = self.base.rsample(k, generator)
        h = self.h if k is None else self.h.unsqueeze(1).expand(-1, k, -1)
        z, log_gates = self._flow(z0, h)
        return {"z": z}, {"z": log_q0 - log_gates}


class IAF(VAE):
    """A ``VAE`` (``vae_args``: its arguments) whose posterior is followed by ``flow_steps``
    IAF steps with ``flow_hidden`` hidden units each and a ``context_dim`` context from the
    encoder; the steps alternate the autoregressive order."""

    def __init__(
        self,
        flow_steps: int = 2,
        flow_hidden: int = 256,
        context_dim: int = 64,
        **vae_args,
    ) -> None:
        super().__init__(**vae_args)
        for key, value in (
            ("flow_steps", flow_steps),
            ("flow_hidden", flow_hidden),
            ("context_dim", context_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VaelabError(f"model.{key}={value} must be an integer >= 1")
        dim = self.latent_sizes["z"]
        features = self.to_posterior.in_features
        self.to_context = nn.Sequential(
            self.linear_cls(features, width_factor(self.activation) * context_dim),
            activation_layer(self.activation),
        )
        orders = [torch.arange(dim), torch.arange(dim).flip(0)]
        self.flow = nn.ModuleList(
            AutoregressiveStep(dim, context_dim, flow_hidden, orders[t % 2], self.activation)
            for t in range(flow_steps)
        )

    def posterior(self, x: Tensor) -> IAFPosterior:
        features = self.encoder(x)
        mu, logvar = self.to_posterior(features).chunk(2, dim=-1)
        return IAFPosterior(mu, logvar, self.to_context(features), self.flow)
