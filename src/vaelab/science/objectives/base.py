"""What a training objective is: a callable class that takes one training batch's
``ObjectiveInput`` and returns an ``ObjectiveOutput``.

An objective is one file in this folder::

    @register_objective("my_bound")
    class MyBound(Objective):
        def __init__(self, weight: float = 1.0):  # from model.objective_args
            self.weight = weight

        def __call__(self, inputs: ObjectiveInput) -> ObjectiveOutput:
            parts = inputs.elbo()  # recon, kl, the draws z, ... (ElboParts)
            loss = parts.recon.mean() + self.weight * inputs.kl_weight * parts.kl.mean()
            return ObjectiveOutput(loss, inputs.elbo_terms())

Its constructor's arguments come from ``model.objective_args`` and, for an argument not given
there, from the model key of the same name (``model.k``, ``model.free_bits``), else its
default. No Lightning and no Hydra here: an objective is maths on tensors.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vaelab.errors import VaelabError
from vaelab.science.bounds import ElboTerms
from vaelab.science.distributions import Latents
from vaelab.science.registry import refuse_unknown_arguments, registration


class ObjectiveOutput(NamedTuple):
    """What an objective returns for one batch.

    loss: the scalar to minimise (nats per image). terms: the per-image ELBO terms [B]
    (``ObjectiveInput.elbo_terms``), logged as ``train/loss``, ``train/recon``, ``train/kl``
    whatever the objective, so runs compare. logged: more terms to log as ``train/<name>``,
    each the mean over the epoch's images: per-image tensors [B] or batch means (scalars).
    """

    loss: Tensor
    terms: ElboTerms
    logged: Mapping[str, Tensor] = {}


@dataclass
class ObjectiveInput:
    """One training batch and what an objective may need of it.

    x: images [B, *input_shape]; net: the variant (``LatentVariableModel``); posterior:
    q(z|x) of x; prior: p(z); beta: ``model.beta``; kl_weight: the KL weight at this step
    (``model.beta`` under ``model.kl_schedule``); step: optimizer steps taken before this
    one; dataset_size: images in the training split (None where the data module does not
    say); generator: the run's seeded generator for every draw.
    """

    x: Tensor
    net: Any
    posterior: Any
    prior: Any
    beta: float
    kl_weight: float
    step: int
    dataset_size: int | None
    generator: torch.Generator | None
    _draws: tuple[Latents, dict[str, Tensor]] | None = field(default=None, repr=False)
    _elbo: Any = field(default=None, repr=False)

    def draws(self) -> tuple[Latents, dict[str, Tensor]]:
        """One reparameterized draw z ~ q(z|x) per image and its log q(z|x): groups
        [B, D_g] and [B] nats, drawn once; ``elbo()`` uses the same draws."""
        if self._draws is None:
            if self._elbo is not None:
                raise RuntimeError("draws() after elbo(): call draws() first to share them")
            self._draws = self.posterior.rsample(None, self.generator)
        return self._draws

    def elbo(self):
        """The ELBO's terms of this batch (``ElboParts``: recon [B], kl [B], kl_parts, z),
        computed once: from ``draws()`` when an objective drew them, else from one draw."""
        if self._elbo is None:
            self._elbo = self.net.elbo(
                self.x,
                generator=self.generator,
                q=self.posterior,
                p=self.prior,
                draws=self._draws,
            )
        return self._elbo

    def elbo_terms(self) -> ElboTerms:
        """Per-image (recon + beta * kl, recon, kl) [B], nats: what is logged."""
        parts = self.elbo()
        return ElboTerms(parts.recon + self.beta * parts.kl, parts.recon, parts.kl)


class Objective:
    """A training objective (module docstring). ``name``: set by ``register_objective``."""

    name = ""

    def __call__(self, inputs: ObjectiveInput) -> ObjectiveOutput:
        raise NotImplementedError


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: ``model.objective=<name>`` builds this class."""

    return registration(OBJECTIVES, "objective", name)


def get_objective(name: str) -> type[Objective]:
    """The class registered as ``name``, or the class at the dotted path ``name``."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except Exception as err:  # noqa: BLE001 - any import failure: the same advice
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise VaelabError(
                f"model.objective={name!r} cannot be imported ({reason}); name a registered "
                f"objective ({', '.join(OBJECTIVES)}) or a class path"
            ) from None
        if isinstance(cls, type):
            return cls
    raise VaelabError(
        f"model.objective={name!r} must be one of {', '.join(OBJECTIVES)} (or the dotted path "
        "of an Objective class)"
    )


def objective_arguments(cls: type) -> list[str]:
    """The names of ``cls``'s constructor arguments (every one of them can be set)."""
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL,)]


def build_objective(
    name: str, arguments: Mapping[str, Any] | None, model_values: Mapping[str, Any]
) -> Objective:
    """The objective ``name`` built with ``arguments`` (``model.objective_args``) and, for
    its other constructor arguments, the model's values of the same name."""
    cls = get_objective(name)
    arguments = dict(arguments or {})
    accepted = objective_arguments(cls)
    refuse_unknown_arguments("objective", name, arguments, accepted)
    for argument in accepted:
        if argument not in arguments and argument in model_values:
            arguments[argument] = model_values[argument]
    return cls(**arguments)
