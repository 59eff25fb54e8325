"""Epoch time with clipping inside the fused Adam step against Lightning's own clipping.

In one process: the default training path with the Trainer's norm clipping handed to the fused
Adam step, against Lightning's ``clip_grad_norm_`` followed by the step.

    python scripts/bench_clip.py [--rounds 6] [--data-root DIR]

Both sides are ``VAELitModule`` with the default fused Adam under a bare Trainer
(``gradient_clip_val=1.0``; no validation, no logger, no callback but vaelab's epoch timer),
one training epoch of the 60 000 MNIST training images per fit; the sides alternate epoch
by epoch, so the drift of a shared machine falls on both, and the order flips every round.
Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import warnings
from pathlib import Path

import lightning as L
import torch

from vaelab.data.datamodule import InMemoryImages, batch_loader
from vaelab.data.files import ensure_files, load_split
from vaelab.lit.callbacks import EpochThroughput
from vaelab.lit.module import VAELitModule


class LightningClipping(VAELitModule):
    """The module with Lightning's default clipping hook (what ran before the fused path)."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, **kwargs) -> None:
        L.LightningModule.configure_gradient_clipping(self, optimizer, gradient_clip_val, **kwargs)


def one_epoch(module: VAELitModule, images: InMemoryImages) -> float:
    timer = EpochThroughput()  # times the training batches, as benchmark.py does
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        gradient_clip_val=1.0,
        gradient_clip_algorithm="norm",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, batch_loader(images, 128, shuffle=True, seed=0))
    ((_, _, seconds),) = timer.records
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_flush_denormal(True)

    paths = ensure_files(Path(args.data_root) / "MNIST" / "raw", download_missing=False)
    images = InMemoryImages(*(torch.as_tensor(a) for a in load_split(paths, "train", None)))
    adam = functools.partial(torch.optim.Adam, lr=1e-3, fused=True)
    torch.manual_seed(0)
    sides = {"clip in fused step": VAELitModule(optimizer=adam)}
    sides["Lightning's clipping"] = LightningClipping(optimizer=adam)
    sides["Lightning's clipping"].load_state_dict(sides["clip in fused step"].state_dict())
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))  # ABBA: no order bias
        for name in order:
            seconds[name].append(one_epoch(sides[name], images))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.3f} s" for n, s in seconds.items()))
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print("medians: " + ", ".join(f"{n} {m:.3f} s/epoch" for n, m in medians.items()))
    fused, lightning = medians.values()
    print(f"clipping in the fused step: {100 * (1 - fused / lightning):.1f} % less time per epoch")


if __name__ == "__main__":
    main()
