"""The importance-weighted bound (Burda et al. 2016)."""

from __future__ import annotations

import torch

from vaelab.science.bounds import iwae_bound
from vaelab.science.objectives.base import (
    Objective,
    ObjectiveInput,
    ObjectiveOutput,
    register_objective,
)


@register_objective("iwae")
class IWAE(Objective):
    """Minus the IWAE bound with ``k`` draws of z per image, mean over the batch (nats per
    image); k=1 is the ELBO. Beta, its schedule and free bits do not apply. What is logged
    is the ELBO's terms of one further draw (no gradient)."""

    def __init__(self, k: int = 1) -> None:
        self.k = k

    def __call__(self, inputs: ObjectiveInput) -> ObjectiveOutput:
        log_w = inputs.net.log_importance_weights(
            inputs.x, self.k, q=inputs.posterior, p=inputs.prior, generator=inputs.generator
        )
        loss = -iwae_bound(log_w).mean()
        with torch.no_grad():
            terms = inputs.elbo_terms()
        return ObjectiveOutput(loss, terms)
