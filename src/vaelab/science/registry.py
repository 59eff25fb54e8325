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
