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
mostly the framework's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench_epoch_overhead import compose_default

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    root = str(Path(args.data_root).resolve())
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for direct in (True, False) if round_ % 2 == 0 else (False, True):
            times[direct].append(ms_per_step(root, args.epochs, args.overrides, direct))
    for direct, label in ((True, "direct steps"), (False, "Lightning's hooks")):
        values = " ".join(f"{t:.2f}" for t in times[direct])
        print(f"{label:18} {values} ms a step; median {statistics.median(times[direct]):.2f}")


if __name__ == "__main__":
    main()
