"""Milliseconds per optimizer step of the default run with and without the direct step path.

    python scripts/bench_step_path.py [--epochs 3] [--rounds 3] [--data-root DIR] [overrides]

With several steps per call (``model.steps_per_call`` > 1) the steps of a call run
``loss.backward()`` and the optimizer's ``step`` directly when nothing overrides Lightning's
per-step hooks (``VAELitModule._steps_directly``), instead of ``manual_backward`` and
``LightningOptimizer.step``, which dispatch three hooks to every callback at every step. This
alternates the default run (every callback, the progress bar off) both ways in one process,
the order flipped every round, and prints the mean time per step of each run's training
batches after its first epoch (``EpochThroughput``), and the medians. Extra arguments are Hydra
overrides (e.g. ``model.hidden_dims=[16] model.latent_dim=2`` for a model whose steps are
mostly the framework's). ``--plain`` adds the plain in-memory loop of
``scripts/plain_loop.py`` (the default model and recipe, no framework) to the rotation, so
that the difference of the medians is the framework's cost per step, in the same process.
``--paired`` instead runs one default fit (``--epochs``, the progress bar off) in which a
callback trains one epoch of the plain loop after each of vaelab's training epochs, on the
same images: each pair of epochs is timed minutes apart at most, so that the machine's
drift, which moves whole runs by 10 % on a shared CPU, cancels in each pair's difference.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from bench_epoch_overhead import compose_default
from plain_loop import PlainVAE, linear_class, run_plain, train_epoch

from vaelab.lit.callbacks import EpochThroughput, wait_for_outputs
from vaelab.lit.module import VAELitModule
from vaelab.runs.train import build, runtime_settings


def ms_per_step(data_root: str, epochs: int, overrides: list[str], direct: bool) -> float:
    """One fit; the mean ms per optimizer step of its epochs after the first."""
    chosen = VAELitModule._steps_directly
    if not direct:
        VAELitModule._steps_directly = lambda self: False
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = compose_default(
                data_root, epochs, ["callbacks.progress_bar=null", *overrides], out
            )
            with runtime_settings(cfg):
                datamodule, model, trainer = build(cfg)
                trainer.fit(model, datamodule=datamodule)
                wait_for_outputs()
            assert model._direct == direct, "the run did not take the path asked for"
    finally:
        VAELitModule._steps_directly = chosen
    (timer,) = [c for c in trainer.callbacks if isinstance(c, EpochThroughput)]
    later = timer.records[1:] or timer.records
    steps = sum(samples for _, samples, _ in later) / datamodule.batch_size
    return 1000 * sum(seconds for *_, seconds in later) / steps


def plain_ms_per_step(data_root: str, epochs: int) -> float:
    """The plain loop's mean ms per optimizer step over its epochs after the first."""
    result = run_plain(Path(data_root), epochs, seed=42)
    later = result["epoch_seconds"][1:] or result["epoch_seconds"]
    steps = math.ceil(55_000 / 128)  # vaelab's default split, batch 128
    return 1000 * statistics.mean(later) / steps


class PlainEpochs(L.Callback):
    """After each training epoch of the run, one epoch of the plain loop (``PlainVAE``, fused
    Adam, ``clip_grad_norm_``, one ``index_select`` per batch of 128) on the run's own
    training images (the same split); both epochs' seconds are kept in ``pairs``."""

    def __init__(self) -> None:
        self.train, self.pairs, self._start = torch.empty(0, 784), [], 0.0
        self.model = PlainVAE(linear_class("auto", "cpu"))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)

    def on_train_start(self, trainer, pl_module) -> None:
        images = trainer.datamodule.data_train.images  # uint8 [N, 28, 28]
        self.train = images.reshape(len(images), -1).float().div(255)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_last_batch:
            return
        ours = time.perf_counter() - self._start
        start = time.perf_counter()
        with torch.enable_grad():
            train_epoch(self.model, self.optimizer, self.train)
        self.pairs.append((ours, time.perf_counter() - start))


def paired(data_root: str, epochs: int, overrides: list[str]) -> None:
    """One default fit with a plain epoch after each of its training epochs."""
    with tempfile.TemporaryDirectory() as out:
        bar = [] if "callbacks=none" in overrides else ["callbacks.progress_bar=null"]
        cfg = compose_default(data_root, epochs, [*bar, *overrides], out)
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            callback = PlainEpochs()
            trainer.callbacks.insert(0, callback)
            trainer.fit(model, datamodule=datamodule)
            wait_for_outputs()
    steps = math.ceil(len(callback.train) / 128)
    print(f"{'epoch':>5}{'vaelab ms/step':>16}{'plain ms/step':>15}{'ratio':>8}")
    for epoch, (ours, plain) in enumerate(callback.pairs):
        print(f"{epoch:5d}{1000 * ours / steps:16.2f}{1000 * plain / steps:15.2f}"
              f"{plain / ours:8.3f}")  # fmt: skip
    later = callback.pairs[1:] or callback.pairs
    ratio = statistics.median(p / o for o, p in later)
    print(f"median after the first epoch: vaelab at {ratio:.3f}x the plain loop's speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--plain", action="store_true", help="the plain loop too")
    parser.add_argument("--paired", action="store_true", help="plain epochs inside one fit")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    root = str(Path(args.data_root).resolve())
    if args.paired:
        paired(root, args.epochs, args.overrides)
        return
    arms = {"direct steps": True, "Lightning's hooks": False}
    if args.plain:
        arms["plain loop"] = None
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(args.rounds):
        order = list(arms)[round_ % len(arms) :] + list(arms)[: round_ % len(arms)]
        for name in order:
            if arms[name] is None:
                times[name].append(plain_ms_per_step(root, args.epochs))
            else:
                times[name].append(ms_per_step(root, args.epochs, args.overrides, arms[name]))
    for name, values in times.items():
        shown = " ".join(f"{t:.2f}" for t in values)
        print(f"{name:18} {shown} ms a step; median {statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
