"""The distributions of the variant seam: q(z|x) and p(z) over latents that may be several
groups of tensors (a hierarchy), with seeded reparameterized sampling.

Latents are a dict ``{group name: tensor [..., D_group]}`` in a fixed order (the variant's
``latent_sizes``); one-group models call their group ``"z"``. ``flatten``/``unflatten`` turn
them into one vector [..., sum of D_group] (figures, statistics, the projector) and back.

A posterior ``q`` (any object with this interface; see ``GaussianPosterior``):

- ``q.rsample(k, generator) -> (z, log_q)``: k reparameterized draws per image, z groups
  [B, k, D_g] (k=None: [B, D_g]) and log q per group [B, k] (k=None: [B]), nats;
- ``q.mean``: a point summary per group [B, D_g] (the mean where it is known) for the
  figures, active units and the projector.

A prior ``p``: ``p.log_prob(z) -> {group: [...]}`` nats and ``p.sample(n, generator)`` ->
groups [n, D_g].

Hand-written rather than ``torch.distributions`` objects because every draw must take a
seeded ``torch.Generator`` (reproducible evaluation), which ``rsample`` of
``torch.distributions`` does not; ``to_torch()`` gives the equivalent object, against which the
tests check these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from vaelab.science.bounds import LOG_2PI, kl_per_dimension, log_normal, log_standard_normal

Latents = dict[str, Tensor]


def flatten(z: Latents) -> Tensor:
    """The groups side by side: [..., D_1 + D_2 + ...] (no copy for one group)."""
    groups = list(z.values())
    return groups[0] if len(groups) == 1 else torch.cat(groups, -1)


def unflatten(v: Tensor, sizes: dict[str, int]) -> Latents:
    """``flatten``'s inverse: v [..., sum(sizes)] -> groups [..., D_g]."""
    return dict(zip(sizes, v.split(list(sizes.values()), -1), strict=True))


def total(per_group: dict[str, Tensor]) -> Tensor:
    """The sum over groups of per-group log densities (or KLs)."""
    values = iter(per_group.values())
    out = next(values)
    for value in values:
        out = out + value
    return out


def draw_normal(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and dtype, from ``generator``
    (which may live on another device, e.g. a CPU generator for a GPU model)."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)


class DiagonalGaussian:
    """N(mu, diag(exp(logvar))) over the last dimension; mu, logvar [..., D]."""

    def __init__(self, mu: Tensor, logvar: Tensor) -> None:
        self.mu, self.logvar = mu, logvar

    @property
    def mean(self) -> Tensor:
        return self.mu

    def _draw(self, k: int | None, generator: torch.Generator | None):
        mu, logvar = (
            (self.mu, self.logvar)
            if k is None
            else (self.mu.unsqueeze(-2), self.logvar.unsqueeze(-2))
        )
        shape = mu.shape if k is None else (*mu.shape[:-2], k, mu.shape[-1])
        eps = draw_normal(shape, mu, generator)
        return torch.addcmul(mu, eps, torch.exp(0.5 * logvar)), eps, logvar

    def rsample(
        self, k: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """z = mu + sigma * eps: [..., k, D] (k=None: [..., D]) and log N(z; mu, sigma) [..., k]
        (k=None: [...])."""
        z, eps, logvar = self._draw(k, generator)
        log_q = -0.5 * (eps.square().sum(-1) + logvar.sum(-1) + z.shape[-1] * LOG_2PI)
        return z, log_q

    def draw(self, k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``rsample``'s z alone (the same draws from the same generator state)."""
        return self._draw(k, generator)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; mu, sigma) summed over the last dimension (broadcasting), nats."""
        return log_normal(z, self.mu, self.logvar)

    def to_torch(self) -> torch.distributions.Distribution:
        normal = torch.distributions.Normal(self.mu, torch.exp(0.5 * self.logvar))
        return torch.distributions.Independent(normal, 1)


class GaussianPosterior:
    """q(z|x) = N(mu, diag(exp(logvar))) of one latent group (the standard VAE's)."""

    def __init__(self, mu: Tensor, logvar: Tensor, group: str = "z") -> None:
        self.gaussian, self.group = DiagonalGaussian(mu, logvar), group

    @property
    def mean(self) -> Latents:
        return {self.group: self.gaussian.mu}

    def rsample(
        self, k: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Latents, dict[str, Tensor]]:
        z, log_q = self.gaussian.rsample(k, generator)
        return {self.group: z}, {self.group: log_q}

    def draw(self, k: int | None = None, generator: torch.Generator | None = None) -> Latents:
        """``rsample``'s z alone: where the KL is in closed form, log q is not needed."""
        return {self.group: self.gaussian.draw(k, generator)}


class StandardNormalPrior:
    """p(z) = N(0, I) for every group of ``sizes``."""

    def __init__(self, sizes: dict[str, int], like: Tensor) -> None:
        self.sizes, self.like = sizes, like

    def log_prob(self, z: Latents) -> dict[str, Tensor]:
        return {g: log_standard_normal(v) for g, v in z.items()}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Latents:
        return {g: draw_normal((n, d), self.like, generator) for g, d in self.sizes.items()}


class KLRegistration(NamedTuple):
    """An exact KL registered for a (posterior type, prior type) pair (``register_kl``)."""

    fn: Callable[..., Latents | None]
    per_dimension: bool
    given_draws: bool


_EXACT_KLS: dict[tuple[type, type], KLRegistration] = {}


def register_kl(
    posterior_type: type, prior_type: type, per_dimension: bool = True, given_draws: bool = False
):
    """Decorator that registers ``fn(q, p)`` as the exact KL(q || p) of a posterior of
    ``posterior_type`` and a prior of ``prior_type`` (or subclasses: the most specific
    registration wins, as in ``torch.distributions.kl.register_kl``). ``fn`` returns
    {group: [B, D_g]} nats per latent dimension (``per_dimension``: the per-dimension
    statistics use it), or {group: [B, 1]} per group (``per_dimension=False``), or None
    where it does not apply (a Monte Carlo estimate is taken instead). The ELBO uses it
    in place of the Monte Carlo estimate::

        @register_kl(HouseholderPosterior, StandardNormalPrior)
        def _(q, p):  # a rotation keeps N(0, I): the base Gaussian's KL
            return {q.group: kl_per_dimension(q.base.mu, q.base.logvar)}

    ``given_draws``: ``fn(q, p, z)`` also receives the ELBO's draws z (groups [B, D_g], or
    [B, k, D_g] with k draws, over which it averages) and returns the KL of each group that
    is exact given the draws of the groups it is conditioned on, e.g. a hierarchy's
    KL(q(z_l | z_above, x) || p(z_l | z_above)) at the drawn z_above. The groups it leaves
    out are estimated by Monte Carlo from the same draws."""

    def register(fn: Callable[..., Latents | None]):
        _EXACT_KLS[(posterior_type, prior_type)] = KLRegistration(fn, per_dimension, given_draws)
        return fn

    return register


def kl_registration(q, p) -> KLRegistration | None:
    """The most specific registration for the types of q and p, or None."""
    for q_type in type(q).__mro__:
        for p_type in type(p).__mro__:
            entry = _EXACT_KLS.get((q_type, p_type))
            if entry is not None:
                return entry
    return None


def exact_kl(q, p) -> tuple[Latents, bool] | None:
    """(KL(q || p) by the most specific registration for the types of q and p, whether it is
    per latent dimension), or None where none is registered, it declines, or it needs the
    draws (``given_draws``: the ELBO calls it with them)."""
    entry = kl_registration(q, p)
    if entry is None or entry.given_draws:
        return None
    value = entry.fn(q, p)
    return None if value is None else (value, entry.per_dimension)


@register_kl(GaussianPosterior, StandardNormalPrior)
def _gaussian_against_standard_normal(q: GaussianPosterior, p: StandardNormalPrior) -> Latents:
    """The closed form of ``bounds.kl_per_dimension``, per latent dimension."""
    if type(p) is not StandardNormalPrior:  # a subclass may change the density
        return None
    return {q.group: kl_per_dimension(q.gaussian.mu, q.gaussian.logvar)}


def closed_form_kl(q, p) -> Latents | None:
    """KL(q || p) per latent dimension, {group: [B, D_g]} nats, where a registration gives it
    per dimension (``register_kl``; a diagonal Gaussian posterior against the standard normal
    prior is registered here); else None."""
    found = exact_kl(q, p)
    return found[0] if found is not None and found[1] else None
