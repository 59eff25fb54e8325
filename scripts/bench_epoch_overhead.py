"""What the default run spends besides training, per epoch and by callback group.

    python scripts/bench_epoch_overhead.py [--epochs 5] [--rounds 3] [--data-root DIR]
                                           [--json FILE] [overrides]

Two measurements of the default config (``python train.py``: 55 000 training images,
validation on 5000 every epoch, checkpoints, figures every 5 epochs and at the end):

1. **Toggles**: the default run and the same run with one callback group switched off
   (checkpoints; figures and training curves; progress bar, throughput and the TensorBoard
   logger; the NaN guard), ``callbacks=none``, and ``callbacks=none`` without validation, each
   in a fresh process, the order rotated every round. For each: ``fit`` (seconds of
   ``trainer.fit``), ``train`` (seconds of its training batches) and ``other`` = fit - train,
   the time spent outside training batches (set-up, validation, checkpoints, figures, the
   end of fit). A group's cost is the default's ``other`` minus that variant's, per epoch
   (medians over the rounds), so a machine that is slower in one round than another moves
   both alike; ``fit vs none`` is the default's fit time over ``callbacks=none``'s.
2. **Profile** (``--profile``, one run in this process): Lightning's ``SimpleProfiler`` on
   the default run; every callback's hooks, validation and the training batches, in seconds
   per epoch and as a share of the training time (the figures' hooks also split into those
   of each epoch and those of the end of fit). ``--rounds 0 --profile`` runs the profile
   alone.

Extra arguments are Hydra overrides for every run (e.g. ``model.onednn_linear=false``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import vaelab.runs  # noqa: F401  (registers the configs' resolvers)
from vaelab.lit.callbacks import wait_for_outputs
from vaelab.runs.train import build, runtime_settings

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no checkpoints": ["callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null"],
    "no figures": ["callbacks.figures=null", "callbacks.training_curves=null"],
    "no bar, throughput, logger": [
        "callbacks.progress_bar=null",
        "callbacks.throughput=null",
        "callbacks.model_summary=null",
        "logger=[]",
    ],
    "no NaN guard": ["callbacks.stop_on_nonfinite_loss=null"],
    "callbacks=none": ["callbacks=none"],
    "callbacks=none, no validation": ["callbacks=none", "trainer.limit_val_batches=0"],
}


class TrainTimer(L.Callback):
    """Seconds of each epoch's training batches (from the epoch's start to its last batch)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_last_batch:
            self.seconds.append(time.perf_counter() - self._start)


def compose_default(data_root: str, epochs: int, overrides: list[str], out: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.data_dir={data_root}", f"trainer.max_epochs={epochs}", *overrides],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = out
    return cfg


def run_variant(data_root: str, epochs: int, overrides: list[str]) -> dict:
    """One fit of the default run with ``overrides``, in this process."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_default(data_root, epochs, overrides, out)
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            timer = TrainTimer()
            trainer.callbacks.insert(0, timer)
            start = time.perf_counter()
            trainer.fit(model, datamodule=datamodule)
            fit = time.perf_counter() - start
            wait_for_outputs()  # the end of fit's PNGs, before their folder is removed
    train = sum(timer.seconds)
    return {"fit": fit, "train": train, "other": fit - train, "epochs": len(timer.seconds)}


def toggles(args) -> dict:
    names = list(VARIANTS)
    runs: dict[str, list[dict]] = defaultdict(list)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            print(f"round {round_ + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            command = [
                sys.executable, __file__, "--variant", name, "--epochs", str(args.epochs),
                "--data-root", args.data_root, *args.overrides,
            ]  # fmt: skip
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    table = {}
    for name in names:
        table[name] = {k: median(name, k) for k in ("fit", "train", "other")}
        # what this variant saves against the default, per epoch, outside training batches
        table[name]["saved_per_epoch"] = (
            statistics.median(
                d["other"] - v["other"] for d, v in zip(runs["default"], runs[name], strict=True)
            )
            / args.epochs
        )
    fit_vs_none = statistics.median(
        d["fit"] / n["fit"] for d, n in zip(runs["default"], runs["callbacks=none"], strict=True)
    )
    print(f"\n{args.epochs} epochs x {args.rounds} rounds; medians; seconds")
    print(f"{'run':32}{'fit':>8}{'train':>8}{'other':>8}{'saved/epoch':>13}")
    for name, row in table.items():
        print(
            f"{name:32}{row['fit']:8.2f}{row['train']:8.2f}{row['other']:8.2f}"
            f"{row['saved_per_epoch']:13.3f}"
        )
    print(f"default fit / callbacks=none fit: {fit_vs_none:.3f} (median of the rounds' ratios)")
    return {"toggles": table, "fit_vs_callbacks_none": fit_vs_none, "runs": dict(runs)}


def profile(args) -> dict:
    """Lightning's SimpleProfiler on one default run: seconds per epoch by group."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_default(args.data_root, args.epochs, args.overrides, out)
        with open_dict(cfg):
            cfg.trainer.profiler = {  # its own report to a file in ``out``, not the terminal
                "_target_": "lightning.pytorch.profilers.SimpleProfiler",
                "dirpath": out,
                "filename": "profile",
            }
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            start = time.perf_counter()
            trainer.fit(model, datamodule=datamodule)
            fit = time.perf_counter() - start
            start = time.perf_counter()
            wait_for_outputs()  # what the output worker had left when fit returned
            outputs = time.perf_counter() - start
        durations = trainer.profiler.recorded_durations
    groups: dict[str, float] = defaultdict(float)
    for action, seconds in durations.items():
        total = sum(seconds)
        if action.startswith("[Callback]"):
            name, hook = action[len("[Callback]") :].rsplit(".", 1)
            if name.startswith("ModelCheckpoint"):
                name = (
                    "ModelCheckpoint (best)" if "'val/loss'" in name else "ModelCheckpoint (last)"
                )
            groups[f"callback {name}"] += total
            if name == "VAEFigures":  # the figures of every epoch apart from the end of fit
                per = "end of fit" if hook in ("on_fit_end", "on_exception") else "each epoch"
                groups[f"callback VAEFigures, {per}"] += total
        elif action == "run_training_batch":
            groups["training batches"] += total
        elif "validation" in action or action == "[_EvaluationLoop].val_next":
            groups["validation (module and loop)"] += total
        elif action == "save_checkpoint":
            groups["save_checkpoint (inside the ModelCheckpoints)"] += total
    epochs = trainer.current_epoch or 1
    train = groups["training batches"]
    print(f"\nSimpleProfiler, default run, {epochs} epochs, fit {fit:.2f} s")
    print(f"{'':52}{'s/epoch':>9}{'% of training':>15}")
    for name, total in sorted(groups.items(), key=lambda kv: -kv[1]):
        if total / epochs >= 0.0005:
            print(f"{name[:52]:52}{total / epochs:9.3f}{100 * total / train:14.2f}%")
    print(
        f"after fit: {outputs:.2f} s until the output worker had drawn the end of fit's PNGs "
        "(it overlaps the test stage in train.py)"
    )
    return {
        "profile": dict(groups),
        "profile_fit_seconds": fit,
        "profile_epochs": epochs,
        "outputs_after_fit_seconds": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--profile", action="store_true", help="also Lightning's profiler")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    if args.variant:  # one run in this fresh process; the parent reads its JSON line
        result = run_variant(
            args.data_root, args.epochs, [*VARIANTS[args.variant], *args.overrides]
        )
        print(json.dumps(result))
        return
    summary = {"epochs": args.epochs, "rounds": args.rounds, "overrides": args.overrides}
    if args.rounds > 0:
        summary |= toggles(args)
    if args.profile:
        summary |= profile(args)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
