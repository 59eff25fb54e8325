"""How the entry points end on an error: one ``error:`` line per message line, exit status 2."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

from vaelab.errors import VaelabError

T = TypeVar("T")


def print_error(err: BaseException) -> None:
    """Each line of ``err``'s message as ``error: <line>`` on stderr."""
    for line in str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)


def quiet_known_warnings() -> None:
    """Silence Lightning's advice that does not apply to in-memory batches, to epoch means
    that torchmetrics already reduces over DDP ranks or to a resumed epoch (the data module
    restores its position itself), and its deprecation notice about torch 2.13's pytree API
    (not ours to fix)."""
    for pattern in (
        ".*does not have many workers.*",
        ".*`num_workers`.*",
        ".*Trying to infer the `batch_size`.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        ".*when logging on epoch level in distributed setting.*",
        ".*your dataloader is not resumable.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def run_or_exit(entry: Callable[..., T], *args) -> T:
    """``entry(*args)`` for a command-line script, without the warnings of
    ``quiet_known_warnings``: a ``VaelabError`` becomes its ``error:`` lines on stderr and exit
    status 2 instead of a traceback."""
    try:
        with warnings.catch_warnings():
            quiet_known_warnings()
            return entry(*args)
    except VaelabError as err:
        print_error(err)
        raise SystemExit(2) from None
