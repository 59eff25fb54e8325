"""How the entry points end on an error: one ``error:`` line per message line, exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from vaelab.errors import VaelabError

T = TypeVar("T")


def print_error(err: BaseException) -> None:
    """Each line of ``err``'s message as ``error: <line>`` on stderr."""
    for line in str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)


def run_or_exit(entry: Callable[..., T], *args) -> T:
    """``entry(*args)`` for a command-line script: a ``VaelabError`` becomes its ``error:``
    lines on stderr and exit status 2 instead of a traceback."""
    try:
        return entry(*args)
    except VaelabError as err:
        print_error(err)
        raise SystemExit(2) from None
