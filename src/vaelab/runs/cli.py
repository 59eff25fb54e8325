"""How the entry points end on an error: one ``error:`` line per message line, exit status 2."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from hydra.errors import InstantiationException

from vaelab.errors import VaelabError

T = TypeVar("T")


def _end_progress_bars() -> None:
    """End the line of every progress bar still drawn (a run stopped mid-epoch), so that what
    follows starts on a line of its own instead of after the bar."""
    bars = getattr(getattr(sys.modules.get("tqdm"), "tqdm", None), "_instances", ())
    streams = {id(bar.fp): bar.fp for bar in list(bars) if not bar.disable}
    for stream in streams.values():
        try:
            stream.write("\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing to end
            pass


def print_error(err: BaseException) -> None:
    """Each line of ``err``'s message as ``error: <line>`` on stderr, starting on a line of
    its own."""
    _end_progress_bars()
    for line in str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)


def vaelab_cause(err: BaseException) -> VaelabError | None:
    """The ``VaelabError`` that ``err`` wraps (Hydra's instantiate wraps what a constructor
    raises, e.g. a variant refusing an argument), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VaelabError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# Lightning's info lines that advertise other products or describe a choice vaelab makes on
# purpose (its own ModelSummary callback); its other lines (devices, checkpoints) stay.
LIGHTNING_TIPS = (
    "\N{ELECTRIC LIGHT BULB} Tip:",
    "Trainer already configured with model summary callbacks",
)


def quiet_known_warnings() -> None:
    """Silence Lightning's advice that does not apply to in-memory batches, to epoch means
    that torchmetrics already reduces over DDP ranks or to a resumed epoch (the data module
    restores its position itself), its deprecation notice about torch 2.13's pytree API
    (not ours to fix), and its note that the checkpoint folder is not empty: a run writes
    into a folder with checkpoints only when it continues them (``resume=``; a new run into
    such a folder is refused before it starts)."""
    for pattern in (
        ".*does not have many workers.*",
        ".*`num_workers`.*",
        ".*Trying to infer the `batch_size`.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        ".*when logging on epoch level in distributed setting.*",
        ".*your dataloader is not resumable.*",
        r".*Checkpoint directory .* exists and is not empty.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIPS)


def _rank_zero_loggers() -> list[logging.Logger]:
    """The loggers of Lightning's ``rank_zero_info`` (the one in use depends on which of
    lightning.pytorch and lightning.fabric was imported last, so all of them)."""
    names = {"lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"}
    try:
        from lightning_utilities.core import rank_zero

        names.add(rank_zero.log.name)
    except (ImportError, AttributeError):
        pass
    return [logging.getLogger(name) for name in sorted(names)]


@contextmanager
def quiet_known_messages() -> Iterator[None]:
    """Within this block: the warnings of ``quiet_known_warnings`` and Lightning's tips
    (``LIGHTNING_TIPS``) are not shown; both come back when it ends."""
    tips = _DropLightningTips()
    loggers = _rank_zero_loggers()
    with warnings.catch_warnings():
        quiet_known_warnings()
        for logger in loggers:
            logger.addFilter(tips)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(tips)


def run_or_exit(entry: Callable[..., T], *args) -> T:
    """``entry(*args)`` for a command-line script, without the messages of
    ``quiet_known_messages``: a ``VaelabError`` becomes its ``error:`` lines on stderr and exit
    status 2 instead of a traceback."""
    try:
        with quiet_known_messages():
            return entry(*args)
    except VaelabError as err:
        print_error(err)
        raise SystemExit(2) from None
    except InstantiationException as err:
        cause = vaelab_cause(err)
        if cause is None:
            raise
        print_error(cause)
        raise SystemExit(2) from None
