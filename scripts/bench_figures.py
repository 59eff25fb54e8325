"""What the per-epoch figures cost the training thread, against a training epoch.

    python scripts/bench_figures.py [--data-root DIR] [--repeats 5]

Trains the default model for one epoch on MNIST (the default config), then times the figures
``VAEFigures`` draws every ``callbacks.figures.every_n_epochs`` epochs (the renders of
reconstructions, samples, interpolation and the latent space of 5000 validation images, and
their writing to TensorBoard) ``--repeats`` times, and prints the median against the epoch's
training time. The default of ``every_n_epochs`` in ``configs/callbacks/default.yaml`` is
chosen from this figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import vaelab.runs  # noqa: F401  (registers the configs' resolvers)
from vaelab.lit.callbacks import EpochThroughput, VAEFigures
from vaelab.runs.train import build, runtime_settings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as out,
        initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"),
    ):
        overrides = [f"paths.data_dir={Path(args.data_root).resolve()}", "trainer.max_epochs=1"]
        cfg = compose("train", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = out
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            trainer.fit(model, datamodule=datamodule)
            (figures,) = [c for c in trainer.callbacks if isinstance(c, VAEFigures)]
            (timer,) = [c for c in trainer.callbacks if isinstance(c, EpochThroughput)]
            seconds = []
            for epoch in range(args.repeats):
                start = time.perf_counter()
                figures._log_figures(trainer, model, figures.render(trainer, model), epoch + 2)
                seconds.append(time.perf_counter() - start)
    figure_seconds = statistics.median(seconds)
    epoch_seconds = timer.records[-1][2]
    share = 100 * figure_seconds / epoch_seconds
    print(
        f"figures: {figure_seconds:.3f} s (median of {args.repeats}); training epoch: "
        f"{epoch_seconds:.2f} s; figures every epoch add {share:.1f} % of the training time, "
        f"every 5 epochs {share / 5:.1f} %"
    )


if __name__ == "__main__":
    main()
