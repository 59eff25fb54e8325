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
        self._expanded_forms: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}

    def _exact(self, z: Tensor, k: Tensor | None = None) -> Tensor:
        """log N(z; mu_k, s_k) by differences (no cancellation): z [N, D] and one component
        per z, k [N] -> [N]; all K components when k is None -> [N, K]."""
        mu, logvar = self.mu.to(z.dtype), self.logvar.to(z.dtype)
        if k is None:
            return log_normal(z.unsqueeze(-2), mu, logvar)
        return log_normal(z, mu[k], logvar[k])

    def _expanded_form(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """The components' log densities as [z^2, z, 1] @ weights [2D + 1, K] in ``dtype``, and
        for a bound on that form's rounding error: the largest precision of each dimension
        [D] and the largest sum of m^2/s^2 [] over components."""
        if dtype not in self._expanded_forms:
            mu, logvar = self.mu.to(dtype), self.logvar.to(dtype)
            precision = torch.exp(-logvar)
            const = (mu.square() * precision + logvar).sum(-1) + mu.shape[-1] * LOG_2PI  # [K]
            # -0.5 [z^2 . (1/s^2) - 2 z . (m/s^2) + const]
            weights = -0.5 * torch.cat([precision.T, -2 * (mu * precision).T, const[None]])
            scaled_mean = (mu.square() * precision).sum(-1).amax()
            self._expanded_forms[dtype] = (weights, precision.amax(0), scaled_mean)
        return self._expanded_forms[dtype]

    def _log_prob_expanded(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """log sum_k N(z; mu_k, s_k) of z [N, D] in z's dtype, by the expanded form with the
        largest component of each z computed again by differences, and [N] where the result
        may be off by more than ``TOLERANCE``: each expanded value may be off by up to
        b = 2 eps (z^2 . max 1/s^2 + max sum m^2/s^2) nats, so the others' mass relative to
        the largest component's, r, may truly be r e^(2b), and the result off by up to
        log(1 + r e^(2b) (e^(2b) - 1)). Where r underflows to 0 the others are taken at the
        smallest normal number (a bound, since exp underflows only below it)."""
        weights, max_precision, max_scaled_mean = self._expanded_form(flat.dtype)
        features = torch.cat([flat.square(), flat, torch.ones_like(flat[:, :1])], -1)
        approx = features @ weights  # [N, K]
        top, k = approx.max(-1)
        # the others' mass relative to the top component's (in place: most of the cost)
        others = approx.sub_(top.unsqueeze(-1)).exp_().sum(-1) - 1
        tiny = torch.finfo(flat.dtype).tiny  # no log(0), no NaN gradient
        log_p = torch.logaddexp(self._exact(flat, k), top + torch.log(others.clamp_min(tiny)))
        bound = 2 * torch.finfo(flat.dtype).eps * (flat.square() @ max_precision + max_scaled_mean)
        with torch.no_grad():
            log_others = torch.where(
                others > 0,
                torch.log(others.clamp_min(tiny)),
                math.log(max(len(self.mu) - 1, 1)) + math.log(tiny),
            )
            if len(self.mu) == 1:  # the one component is computed by differences
                return log_p, torch.zeros_like(log_p, dtype=torch.bool)
            error = log_others + 2 * bound + torch.log(torch.expm1(2 * bound))
            return log_p, error > math.log(self.TOLERANCE)

    def log_prob(self, z: Latents) -> dict[str, Tensor]:
        """log p(z): z [..., D] -> [...] nats.

        The components' log densities as one matrix product [z^2, z, 1] @ weights, so that the
        cost is that of a small linear layer per z rather than [N, K, D] differences. That
        expanded form cancels terms as large as z^2/s^2 and m^2/s^2: float32 loses up to nats
        where components are narrow, so the largest component of each z is computed again by
        differences, and where the others' mass times their rounding bound may exceed
        ``TOLERANCE`` the z is computed again in float64, whose rounding is 1e-9 of float32's
        (on trained models this is often half the draws, and costs far less than [N, K, D]
        differences); the z that even float64 leaves unsure (components narrower than about
        exp(-30)) get the whole mixture by differences in float64. Within 1e-4 nats of
        float64 differences for log-variances down to -40 (tests/test_vampprior.py)."""
        v = z[self.group]
        flat = v.reshape(-1, v.shape[-1])
        log_p, unsure = self._log_prob_expanded(flat)
        if bool(unsure.any()) and flat.dtype != torch.float64:
            wide, still = self._log_prob_expanded(flat[unsure].double())
            log_p = log_p.masked_scatter(unsure, wide.to(log_p.dtype))
            unsure = unsure.masked_scatter(unsure, still)
        if bool(unsure.any()):
            exact = torch.logsumexp(self._exact(flat[unsure].double()), -1)
            log_p = log_p.masked_scatter(unsure, exact.to(log_p.dtype))
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
