"""Training objectives by name: one file each in this folder (``elbo.py``, ``iwae.py``,
``beta_tcvae.py``), each registering its class with ``@register_objective("<name>")``;
``model.objective=<name>`` picks it (a dotted class path works too, for an objective that
lives outside vaelab). ``base.py`` says what an objective receives and returns.

Every module of this folder is imported here, so a new file is registered by being there.
"""

from __future__ import annotations

import importlib
import pkgutil

from vaelab.science.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveInput,
    ObjectiveOutput,
    build_objective,
    get_objective,
    objective_arguments,
    register_objective,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveInput",
    "ObjectiveOutput",
    "build_objective",
    "get_objective",
    "objective_arguments",
    "register_objective",
]
