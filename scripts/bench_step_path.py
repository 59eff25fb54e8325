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
Each vaelab epoch is split into the time inside ``training_step`` (the steps themselves) and
the time around it (Lightning's loop, the callbacks, the batches' gather and conversion).
``--paired --ops`` also runs the second pair of epochs under torch's profiler and prints the
aten ops per optimizer step on each side: their calls and self CPU time, and the ops whose
number of calls differs (that pair is left out of the medians).
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
from torch.profiler import ProfilerActivity

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
    training images (the same split). ``pairs`` keeps, per epoch, vaelab's seconds, the part
    of them spent inside ``training_step`` (the steps themselves; the rest is Lightning's loop,
    the callbacks and the batches' gather) and the plain epoch's seconds. With ``ops_epoch``,
    that epoch's pair runs under torch's profiler and ``ops`` keeps each side's aten ops
    ({name: (calls, self CPU seconds)})."""

    def __init__(self, ops_epoch: int | None = None) -> None:
        self.train, self.pairs, self._start = torch.empty(0, 784), [], 0.0
        self.model = PlainVAE(linear_class("auto", "cpu"))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.in_step, self.ops_epoch, self.ops, self._profiler = 0.0, ops_epoch, {}, None

    def on_train_start(self, trainer, pl_module) -> None:
        images = trainer.datamodule.data_train.images  # uint8 [N, 28, 28]
        self.train = images.reshape(len(images), -1).float().div(255)
        step = pl_module.training_step

        def timed_step(*args, **kwargs):
            start = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                self.in_step += time.perf_counter() - start

        pl_module.training_step = timed_step  # Lightning looks the hook up on the instance

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.ops_epoch:
            self._profiler = torch.profiler.profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()
        self.in_step, self._start = 0.0, time.perf_counter()

    def _ops(self, side: str) -> None:
        self._profiler.__exit__(None, None, None)
        events = self._profiler.key_averages()
        self.ops[side] = {
            e.key: (e.count, e.self_cpu_time_total / 1e6) for e in events if "::" in e.key
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_last_batch:
            return
        ours, in_step = time.perf_counter() - self._start, self.in_step
        if self._profiler is not None:
            self._ops("vaelab")
            self._profiler = torch.profiler.profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()
        start = time.perf_counter()
        with torch.enable_grad():
            train_epoch(self.model, self.optimizer, self.train)
        self.pairs.append((ours, in_step, time.perf_counter() - start))
        if self._profiler is not None:
            self._ops("plain")
            self._profiler = None


def print_ops(ops: dict, steps: int) -> None:
    """The aten ops of a profiled pair of epochs, per optimizer step: their total calls and
    self CPU time on each side, and the ops whose calls differ."""
    print(f"\naten ops per optimizer step (an epoch of {steps} steps under the profiler)")
    for side, table in ops.items():
        calls = sum(c for c, _ in table.values()) / steps
        ms = 1000 * sum(t for _, t in table.values()) / steps
        print(f"{side:>8}: {calls:6.1f} calls, {ms:6.3f} ms self CPU")
        total = sum(t for _, t in table.values())
        largest = sorted(table.items(), key=lambda item: -item[1][1])[:4]
        shares = ", ".join(f"{name} {100 * t / total:.0f} %" for name, (_, t) in largest)
        print(f"{'':10}largest: {shares}")
    print(f"{'op':44}{'vaelab calls':>14}{'plain calls':>13}{'vaelab ms':>11}{'plain ms':>10}")
    names = sorted(set(ops["vaelab"]) | set(ops["plain"]))
    rows = []
    for name in names:
        (cv, tv), (cp, tp) = (ops[side].get(name, (0, 0.0)) for side in ("vaelab", "plain"))
        if round(cv / steps, 1) != round(cp / steps, 1):
            rows.append((tp - tv, name, cv / steps, cp / steps, tv, tp))
    for _, name, cv, cp, tv, tp in sorted(rows):
        print(f"{name[:44]:44}{cv:14.1f}{cp:13.1f}"
              f"{1000 * tv / steps:11.3f}{1000 * tp / steps:10.3f}")  # fmt: skip


def paired(data_root: str, epochs: int, overrides: list[str], ops: bool = False) -> None:
    """One default fit with a plain epoch after each of its training epochs."""
    with tempfile.TemporaryDirectory() as out:
        bar = [] if "callbacks=none" in overrides else ["callbacks.progress_bar=null"]
        cfg = compose_default(data_root, epochs, [*bar, *overrides], out)
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            callback = PlainEpochs(ops_epoch=min(1, epochs - 1) if ops else None)
            trainer.callbacks.insert(0, callback)
            trainer.fit(model, datamodule=datamodule)
            wait_for_outputs()
    steps = math.ceil(len(callback.train) / 128)
    print(f"{'epoch':>5}{'vaelab ms/step':>16}{'in training_step':>18}{'plain ms/step':>15}"
          f"{'ratio':>8}")  # fmt: skip
    for epoch, (ours, in_step, plain) in enumerate(callback.pairs):
        print(f"{epoch:5d}{1000 * ours / steps:16.2f}{1000 * in_step / steps:18.2f}"
              f"{1000 * plain / steps:15.2f}{plain / ours:8.3f}")  # fmt: skip
    # the profiled pair is not timed: the profiler's own cost would skew it
    later = [p for e, p in enumerate(callback.pairs) if e != callback.ops_epoch]
    later = later[1:] or later
    ratio = statistics.median(p / o for o, _, p in later)
    print(f"median after the first epoch: vaelab at {ratio:.3f}x the plain loop's speed")
    ours, in_step, plain = (1000 * statistics.median(v) / steps for v in zip(*later, strict=True))
    print(
        f"medians, ms a step: vaelab {ours:.2f} = {in_step:.2f} in training_step + "
        f"{ours - in_step:.2f} around it (Lightning's loop, callbacks, batches); "
        f"plain {plain:.2f}"
    )
    if callback.ops:
        print_ops(callback.ops, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--plain", action="store_true", help="the plain loop too")
    parser.add_argument("--paired", action="store_true", help="plain epochs inside one fit")
    parser.add_argument("--ops", action="store_true", help="--paired: profile one pair's ops")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    root = str(Path(args.data_root).resolve())
    if args.paired:
        paired(root, args.epochs, args.overrides, args.ops)
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
