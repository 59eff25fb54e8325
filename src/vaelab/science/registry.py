"""Registries of extensions by name (objectives, likelihoods): one class decorator each."""

from __future__ import annotations

from collections.abc import Callable

from vaelab.errors import VaelabError


def registration(registry: dict[str, type], kind: str, name: str) -> Callable[[type], type]:
    """A class decorator that registers its class in ``registry`` as ``name`` (and sets the
    class's ``name``); a second class under a taken name is refused in one line."""

    def register(cls: type) -> type:
        if name in registry and registry[name] is not cls:
            raise VaelabError(
                f"{kind} {name!r} is registered twice ({registry[name].__module__} and "
                f"{cls.__module__}); give one of them another name"
            )
        cls.name = name
        registry[name] = cls
        return cls

    return register


def refuse_unknown_arguments(kind: str, name: str, given, accepted: list[str]) -> None:
    """One VaelabError naming the first of ``given`` that the ``kind`` (objective,
    likelihood) called ``name`` does not take (``model.<kind>_args.<argument>``)."""
    unknown = [a for a in given if a not in accepted]
    if unknown:
        raise VaelabError(
            f"model.{kind}_args.{unknown[0]}: {kind} {name!r} has no argument "
            f"{unknown[0]!r} (its arguments: {', '.join(accepted) or 'none'})"
        )
