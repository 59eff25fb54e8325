"""What the per-epoch figures cost the training thread, against a training epoch.

    python scripts/bench_figures.py [--data-root DIR] [--epochs 3] [overrides]

Trains the default config (figures every epoch) for ``--epochs`` epochs on MNIST and times,
inside that run, every hook of ``VAEFigures`` that runs during an epoch: keeping the
validation step's posterior means (``on_validation_batch_end``) and rendering and writing
the reconstructions, samples, interpolation and latent space (5000 points) to TensorBoard
(``on_validation_epoch_end``), and the epoch's histograms (``on_train_epoch_end``). Prints
those seconds per epoch (the median over the epochs after the first, which also builds the
figure it then redraws) against the median training time of an epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import vaelab.runs  # noqa: F401  (registers the configs' resolvers)
from vaelab.lit.callbacks import EpochThroughput, VAEFigures, wait_for_outputs
from vaelab.runs.train import build, runtime_settings

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ("on_validation_batch_end", "on_validation_epoch_end", "on_train_epoch_end")


def timed(figures: VAEFigures, seconds: dict[int, float], trainer) -> None:
    """Wrap the hooks of ``figures`` so that their seconds add up per epoch."""
    for hook in HOOKS:
        original = getattr(figures, hook)

        def wrapper(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                if not trainer.sanity_checking:
                    seconds[trainer.current_epoch] += time.perf_counter() - start

        setattr(figures, hook, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as out,
        initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"),
    ):
        overrides = [
            f"paths.data_dir={Path(args.data_root).resolve()}",
            f"trainer.max_epochs={args.epochs}",
            *args.overrides,
        ]
        cfg = compose("train", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = out
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            (figures,) = [c for c in trainer.callbacks if isinstance(c, VAEFigures)]
            (timer,) = [c for c in trainer.callbacks if isinstance(c, EpochThroughput)]
            seconds: dict[int, float] = defaultdict(float)
            timed(figures, seconds, trainer)
            trainer.fit(model, datamodule=datamodule)
            wait_for_outputs()  # the end of fit's PNGs, before their folder is removed
    later = [seconds[e] for e in sorted(seconds)][1:] or list(seconds.values())
    figure_seconds = statistics.median(later)
    epoch_seconds = statistics.median(r[2] for r in timer.records)
    print(f"figures per epoch: {[round(seconds[e], 3) for e in sorted(seconds)]} s")
    print(
        f"figures: {figure_seconds:.3f} s an epoch (median after the first, every "
        f"{figures.every_n_epochs} epoch(s)); training epoch: {epoch_seconds:.2f} s; "
        f"the figures add {100 * figure_seconds / epoch_seconds:.2f} % of the training time"
    )


if __name__ == "__main__":
    main()
