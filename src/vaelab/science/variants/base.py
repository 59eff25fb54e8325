"""The variant seam: what every VAE variant provides, and the bounds derived from it.

A variant subclasses ``LatentVariableModel`` (or ``vae.VAE``, to keep the standard networks)
and provides three distributions (``vaelab.science.distributions`` says their interface):

- ``posterior(x)``: q(z|x) of images x [B, *input_shape]: seeded reparameterized draws with
  their log q, and a point summary (``mean``) for the figures and statistics;
- ``prior()``: p(z): log density and seeded draws;
- ``decode_logits(z)``: the parameters of p(x|z) for ``self.likelihood`` (a
  ``vaelab.science.likelihoods.Likelihood``), z groups [N, D_g] -> [N, *input_shape];

and sets ``input_shape``, ``likelihood`` and ``latent_sizes`` ({group: size}, in the order
the groups are flattened). Latents are dicts of tensors, so a hierarchy is several groups.

Everything else in vaelab (the objectives, validation, evaluation's ELBO, the NLL, every
figure, the projector, active units, sample.py) goes through these and the derived methods
below: ``elbo`` (the exact KL where ``distributions.register_kl`` has one, Monte Carlo
otherwise, per group), ``log_importance_weights`` (IWAE and the NLL), ``decode`` and ``sample``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from vaelab.science.distributions import (
    Latents,
    closed_form_kl,
    flatten,
    kl_registration,
    total,
)


class ElboParts(NamedTuple):
    """The ELBO's terms per image, nats.

    recon [B]: -log p(x|z) (averaged over the draws); kl [B]: KL(q(z|x) || p(z)).
    kl_parts: the KL per group, {group: [B, D_g]} per dimension when in closed form
    (``closed_form``), else {group: [B, 1]} estimated by Monte Carlo.
    posterior: q(z|x), whose ``mean`` the latent statistics use.
    z: the draws the terms were computed from, groups [B, D_g] ([B, k, D_g] with k draws).
    """

    recon: Tensor
    kl: Tensor
    kl_parts: dict[str, Tensor]
    closed_form: bool
    posterior: object
    z: Latents | None = None

    def kl_per_dimension(self) -> Tensor | None:
        """[B, sum of D_g] nats, the groups side by side, when in closed form; else None."""
        return flatten(self.kl_parts) if self.closed_form else None


class LatentVariableModel(nn.Module):
    """The interface of a VAE variant (module docstring) and what derives from it."""

    input_shape: tuple[int, ...]
    latent_sizes: dict[str, int]

    # --- what a variant provides -----------------------------------------------------------

    def posterior(self, x: Tensor):
        """q(z|x) for images x [B, *input_shape]."""
        raise NotImplementedError

    def prior(self):
        """p(z)."""
        raise NotImplementedError

    def decode_logits(self, z: Latents) -> Tensor:
        """z groups [N, D_g] -> parameters of p(x|z) [N, *input_shape]."""
        raise NotImplementedError

    # --- derived -------------------------------------------------------------------------

    @property
    def latent_dim(self) -> int:
        """The size of all latent groups together (the flattened latent vector)."""
        return sum(self.latent_sizes.values())

    def device_like(self) -> Tensor:
        """A parameter: the device and dtype that new tensors of the model take."""
        return next(self.parameters())

    def fill_below(self, z: Latents, group: str) -> Latents:
        """``z`` with each latent group that the generative path computes from ``group``
        replaced by its conditional prior mean given the group above it: how a change of
        ``group`` reaches the image. Here the groups decode side by side, so ``z`` is
        returned as it is; a hierarchy of latents overrides it."""
        return z

    def decode(self, z: Latents) -> Tensor:
        """z groups [N, D_g] -> what the figures show (pixel means in [0, 1]), [N, *image]."""
        return self.likelihood.mean(self.decode_logits(z))

    def log_px_given_z(self, z: Latents, x: Tensor) -> Tensor:
        """log p(x|z), nats: z groups [B, D_g] -> [B], or [B, K, D_g] (K draws per image of
        x [B, *input_shape]) -> [B, K]."""
        lead = next(iter(z.values())).shape[:-1]
        flat = {g: v.reshape(-1, v.shape[-1]) for g, v in z.items()}
        logits = self.decode_logits(flat).view(*lead, *self.input_shape)
        return self.likelihood.log_prob(logits, x)

    def monte_carlo_kl(self, p, z: Latents, log_q: dict[str, Tensor]) -> dict[str, Tensor]:
        """KL(q || p) per group estimated from draws z (groups [B, D_g] or [B, K, D_g]) and
        their log q ([B] or [B, K]): log q - log p averaged over the draws, {group: [B, 1]}."""
        log_p = p.log_prob(z)
        many = next(iter(log_q.values())).dim() == 2
        parts = {g: log_q[g] - log_p[g] for g in log_q}
        return {g: (v.mean(1) if many else v).unsqueeze(1) for g, v in parts.items()}

    def kl_per_dimension(self, q) -> Tensor | None:
        """KL(q || p) per latent dimension [B, sum of D_g] nats (the groups side by side) where
        it has a closed form, else None (not defined: the prior or posterior does not
        factorize over dimensions)."""
        closed = closed_form_kl(q, self.prior())
        return None if closed is None else flatten(closed)

    def elbo(
        self,
        x: Tensor,
        k: int | None = None,
        generator: torch.Generator | None = None,
        q=None,
        p=None,
        draws: tuple[Latents, dict[str, Tensor]] | None = None,
    ) -> ElboParts:
        """The ELBO's terms for x [B, *input_shape]: one draw z ~ q(z|x) per image (k=None),
        or recon and a Monte Carlo KL averaged over k draws. The KL is in closed form where
        ``exact_kl`` knows one (``distributions.register_kl``: its draws' log q is not
        needed, so a posterior's ``draw`` skips it), else ``monte_carlo_kl``. ``q`` (of these
        x) and ``p``: when already built; ``draws``: (z, log q) of ``q.rsample`` to use
        instead of drawing (an objective that needs log q shares its draws with the ELBO)."""
        q = self.posterior(x) if q is None else q
        p = self.prior() if p is None else p
        entry = kl_registration(q, p)
        if entry is not None and entry.given_draws:  # exact given the draws of other groups
            z, log_q = draws if draws is not None else q.rsample(k, generator)
            known = entry.fn(q, p, z) or {}
            missing = {g: v for g, v in log_q.items() if g not in known}
            estimated = self.monte_carlo_kl(p, z, missing) if missing else {}
            parts = {g: known[g] if g in known else estimated[g] for g in log_q}
            log_px = self.log_px_given_z(z, x)
            recon = -(log_px if next(iter(z.values())).dim() == 2 else log_px.mean(1))
            kl = total({g: v.sum(1) for g, v in parts.items()})
            return ElboParts(recon, kl, parts, entry.per_dimension and not missing, q, z)
        value = entry.fn(q, p) if entry is not None else None
        exact = None if value is None else (value, entry.per_dimension)
        closed = exact is not None and exact[1]  # the KL per latent dimension is known
        if draws is not None:
            z, log_q = draws
            parts = exact[0] if exact is not None else self.monte_carlo_kl(p, z, log_q)
        elif exact is not None:
            parts = exact[0]
            z = q.draw(k, generator) if hasattr(q, "draw") else q.rsample(k, generator)[0]
        else:
            z, log_q = q.rsample(k, generator)
            parts = self.monte_carlo_kl(p, z, log_q)
        log_px = self.log_px_given_z(z, x)
        recon = -(log_px if next(iter(z.values())).dim() == 2 else log_px.mean(1))
        kl = total({g: v.sum(1) for g, v in parts.items()})
        return ElboParts(recon, kl, parts, closed, q, z)

    def forward(self, x: Tensor) -> ElboParts:
        return self.elbo(x)

    def log_importance_weights(
        self,
        x: Tensor,
        k: int,
        q=None,
        p=None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per image of x
        [B, *input_shape]: [B, k] nats. ``q`` (of these x) and ``p``: when already built."""
        q = self.posterior(x) if q is None else q
        p = self.prior() if p is None else p
        z, log_q = q.rsample(k, generator)
        return self.log_px_given_z(z, x) + total(p.log_prob(z)) - total(log_q)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images decoded from z ~ p(z): [n, *input_shape] in [0, 1]."""
        return self.decode(self.prior().sample(n, generator))
