"""The negative beta-ELBO (Kingma & Welling 2014; Higgins et al. 2017), with free bits
(Kingma et al. 2016): the default objective."""

from __future__ import annotations

from vaelab.science.bounds import free_bits_kl
from vaelab.science.objectives.base import (
    Objective,
    ObjectiveInput,
    ObjectiveOutput,
    register_objective,
)


@register_objective("elbo")
class ELBO(Objective):
    """recon + kl_weight * KL, means over the batch (nats per image), one draw of z per image.

    ``free_bits`` > 0: the KL term is ``free_bits_kl`` per latent dimension where the KL is in
    closed form, else each group's whole KL against ``free_bits`` times its size."""

    def __init__(self, free_bits: float = 0.0) -> None:
        self.free_bits = free_bits

    def __call__(self, inputs: ObjectiveInput) -> ObjectiveOutput:
        parts = inputs.elbo()
        if self.free_bits > 0:
            sizes = inputs.net.latent_sizes
            kl_term = sum(
                free_bits_kl(part, self.free_bits * sizes[group] / part.shape[1])
                for group, part in parts.kl_parts.items()
            )
        else:
            kl_term = parts.kl.mean()
        loss = parts.recon.mean() + inputs.kl_weight * kl_term
        return ObjectiveOutput(loss, inputs.elbo_terms())
