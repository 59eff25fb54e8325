"""Training and evaluation throughput of vaelab against the reference script, side by side.

    python scripts/benchmark.py [--epochs 3] [--rounds 1] [--data-root DIR] [--json FILE]

Alternates, round by round and each in a fresh process, (a) a faithful plain-PyTorch copy of
the reference training loop (per-sample Dataset, DataLoader(batch_size=128, shuffle=True,
num_workers=2), Adam 1e-3, gradient-norm clipping 1.0, the same 784-256-256-32 model, BCE on
sigmoid outputs) and (b) vaelab's own training path: the default config through
``vaelab.runs.train.build`` and the Trainer. Both train on all 60 000 training images
(``experiment=seed_reference``) and are scored on the 10 000 test images after E epochs.
Prints a table; ``--json`` writes it too. vaelab's run also times the importance-sampled NLL
(``vaelab.evaluation.metrics.dataset_log_likelihood``, ``--nll-k`` samples per image,
default 5000) on the
first ``--nll-images`` test images and extrapolates it to the 10 000 of the test set
(``--nll-images 10000`` times all of them; ``--nll-images 0`` skips it).

Stronger yardsticks in the same rounds (``scripts/plain_loop.py``): (c) ``plain``, the same
model and recipe as a plain in-memory PyTorch loop with no framework (the fastest eager loop
we could write), (d) ``pythae``, pythae 0.1.2's ``BaseTrainer`` on the same model and
recipe (skipped, with the reason, where pythae does not import), both on vaelab's default
55 000 / 5000 split with validation every epoch, against (e) ``vaelab_default``, the default
config (``python train.py``'s run: validation, checkpoints, figures) through the Trainer.
These three report fit samples/s (training images x epochs / seconds of the whole fit) and
the test loss after E epochs; vaelab's ratios are to its default run. Their linear layers
take the path ``model.onednn_linear=auto`` takes here (``--linear`` forces either).
``--sides`` picks the sides (default: all).

    python scripts/benchmark.py --whole [--epochs 20] [--rounds 1] [overrides]

Whole processes instead, from start to exit, as a user runs them: ``python train.py`` (the
default run: validation, figures, checkpoints, the test stage, with ``trainer.max_epochs=E``
and any overrides; its outputs in a temporary dir) alternated with ``python
scripts/reference_vae.py --epochs E``, and the ratio of their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from plain_loop import pythae_missing, run_plain, run_pythae
from reference_vae import ReferenceMNIST, ReferenceVAE, test_epoch, train_epoch
from torch import nn
from torch.utils.data import DataLoader

import vaelab.runs  # noqa: F401  (registers ${vaelab_root:})
from vaelab.data.files import ensure_files, load_split
from vaelab.evaluation.metrics import dataset_log_likelihood
from vaelab.lit.callbacks import EpochThroughput, wait_for_outputs
from vaelab.runs.train import build, runtime_settings

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("reference", "vaelab", "plain", "pythae", "vaelab_default")


# ---- (a) the reference script (scripts/reference_vae.py) ------------------------------
def run_reference(train, test, epochs: int, seed: int, device: str = "cpu") -> dict:
    """The reference script's loops (scripts/reference_vae.py, without its prints and image
    files), timed per epoch; on ``device`` (cuda: batches from pinned memory)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    pin = device.type == "cuda"
    model = ReferenceVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(train, batch_size=128, shuffle=True, num_workers=2, pin_memory=pin)
    test_loader = DataLoader(test, batch_size=128, shuffle=False, num_workers=2, pin_memory=pin)
    epoch_seconds, test_seconds = [], []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_epoch(model, optimizer, loader, epoch, device, log_interval=None)
        if pin:
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        test_loss = test_epoch(model, test_loader, epoch, None, device)
        test_seconds.append(time.perf_counter() - start)
    return {
        "train_samples_per_sec": len(train) * epochs / sum(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "test_images_per_sec": len(test) / statistics.median(test_seconds),
        "test_loss": test_loss,
    }


# ---- (b) vaelab through the Trainer -------------------------------------------------------
def time_nll(net: nn.Module, x: torch.Tensor, k: int) -> dict:
    """Seconds of the importance-sampled NLL with k samples on images x, as eval.py runs it."""
    net = net.to(x.device).eval()  # Lightning leaves the model on the CPU after fit
    start = time.perf_counter()
    nll = -dataset_log_likelihood(net, x, k)
    seconds = time.perf_counter() - start
    return {
        "nll_k": k,
        "nll_images": len(x),
        "nll_seconds": seconds,
        "nll_images_per_sec": len(x) / seconds,
        "nll_seconds_for_10000_images": seconds * 10000 / len(x),
        "nll": float(nll.mean()),
    }


def run_vaelab(
    data_root: Path,
    epochs: int,
    overrides: list[str],
    nll_k: int,
    nll_images: int,
    experiment: str | None = "seed_reference",
):
    """vaelab through the Trainer: ``experiment=seed_reference`` (against the reference
    script), or with ``experiment=None`` the default run (against the plain loop)."""
    with (
        tempfile.TemporaryDirectory() as out,
        initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"),
    ):
        cfg = compose(
            "train",
            overrides=[
                *([f"experiment={experiment}"] if experiment else []),
                f"paths.data_dir={data_root}",
                f"trainer.max_epochs={epochs}",
                "callbacks.test_metrics=null",  # time the ELBO test pass alone (NLL: see below)
                *overrides,
            ],
        )
        with open_dict(cfg):
            cfg.paths.output_dir = out
        with runtime_settings(cfg):
            datamodule, model, trainer = build(cfg)
            # in memory before the clock starts, as the plain loop's and pythae's data are
            datamodule.setup("fit")
            start = time.perf_counter()
            trainer.fit(model, datamodule=datamodule)
            fit_seconds = time.perf_counter() - start
            wait_for_outputs()  # the end of fit's PNGs: done before the test pass is timed
            (timer,) = [c for c in trainer.callbacks if isinstance(c, EpochThroughput)]
            start = time.perf_counter()
            test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
            test_seconds = time.perf_counter() - start
        x_test = datamodule.data_test[torch.arange(min(nll_images, len(datamodule.data_test)))][0]
        nll = time_nll(model.net, x_test, nll_k) if nll_images else {}
    samples = sum(r[1] for r in timer.records)
    seconds = [r[2] for r in timer.records]
    return {
        "train_samples_per_sec": samples / sum(seconds),
        "fit_samples_per_sec": samples / fit_seconds,
        "fit_seconds": fit_seconds,
        "epoch_seconds": seconds,
        "linear": "oneDNN" if model.hparams.get("onednn_linear") is True else "nn",
        "test_images_per_sec": len(datamodule.data_test) / test_seconds,
        "test_loss": test["test/loss"],
        **nll,
    }


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_side(side: str, data_root: Path, args) -> dict:
    if side == "vaelab":
        return run_vaelab(data_root, args.epochs, args.overrides, args.nll_k, args.nll_images)
    if side == "vaelab_default":
        overrides = [f"data.val_size={args.val_size}", *args.overrides]
        return run_vaelab(data_root, args.epochs, overrides, 0, 0, experiment=None)
    if side == "plain":
        return run_plain(data_root, args.epochs, args.seed, args.device, args.linear, args.val_size)
    if side == "pythae":
        return run_pythae(
            data_root, args.epochs, args.seed, args.device, args.linear, args.val_size
        )
    paths = ensure_files(data_root / "MNIST" / "raw", download_missing=False)
    train = ReferenceMNIST(*load_split(paths, "train", None))
    test = ReferenceMNIST(*load_split(paths, "test", None))
    return run_reference(train, test, args.epochs, args.seed, args.device)


def run_in_subprocess(side: str, args) -> dict:
    """Each run in a fresh process, so neither inherits the other's threads, forked data
    workers or allocator state."""
    command = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--epochs",
        str(args.epochs),
        "--data-root",
        args.data_root,
        "--seed",
        str(args.seed),
        "--nll-k",
        str(args.nll_k),
        "--nll-images",
        str(args.nll_images),
        "--device",
        args.device,
        "--linear",
        args.linear,
        "--val-size",
        str(args.val_size),
        *args.overrides,
    ]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_process(command: list[str]) -> float:
    """Seconds from starting ``command`` to its exit (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def whole_runs(args) -> dict:
    """Alternates the reference script's whole run and vaelab's default run."""
    seconds: dict[str, list[float]] = {"reference": [], "vaelab": []}
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as out:
            commands = {
                "reference": [
                    sys.executable, str(ROOT / "scripts" / "reference_vae.py"),
                    "--epochs", str(args.epochs), "--data-root", args.data_root,
                    "--out", f"{out}/reference", "--seed", str(args.seed),
                    "--device", args.device,
                ],
                "vaelab": [
                    sys.executable, str(ROOT / "train.py"), f"paths.data_dir={args.data_root}",
                    f"paths.log_dir={out}/logs", f"trainer.max_epochs={args.epochs}",
                    f"seed={args.seed}", *args.overrides,
                ],
            }  # fmt: skip
            for side, command in commands.items():
                print(f"round {round_ + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
                seconds[side].append(time_process(command))
    ref, ours = (statistics.median(seconds[s]) for s in ("reference", "vaelab"))
    return {
        "machine": machine(),
        "mode": "whole process",
        "epochs": args.epochs,
        "rounds": args.rounds,
        "overrides": args.overrides,
        "reference_seconds": ref,
        "vaelab_seconds": ours,
        "speedup": ref / ours,
        "runs": seconds,
        "vaelab_version": vaelab.__version__,
    }


def machine() -> str:
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, help="default: 3, or 20 with --whole")
    parser.add_argument("--whole", action="store_true", help="time whole processes")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"],
        help="cuda: the reference on the GPU and vaelab with trainer.accelerator=gpu",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="alternations of (a) then (b)")
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--nll-k", type=int, default=5000, help="importance samples per image")
    parser.add_argument("--nll-images", type=int, default=1000, help="test images for the NLL")
    parser.add_argument(
        "--sides", default=",".join(SIDES), help=f"comma-separated, of {','.join(SIDES)}"
    )
    parser.add_argument(
        "--linear", default="auto", choices=["auto", "true", "false"],
        help="the plain loop's and pythae's linear path (auto: as vaelab's default here)",
    )  # fmt: skip
    parser.add_argument(
        "--val-size", type=int, default=5000, help="the 55 000 / 5000 split's hold-out"
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for vaelab's run")
    args = parser.parse_args()

    args.epochs = args.epochs or (20 if args.whole else 3)
    if args.device == "cuda" and not args.side:  # (a side's process gets them passed on)
        args.overrides = ["trainer.accelerator=gpu", *args.overrides]
    if args.whole:
        args.data_root = str(Path(args.data_root).resolve())
        summary = whole_runs(args)
        print(f"\n{summary['machine']}; whole runs of {args.epochs} epochs x {args.rounds} rounds")
        print(f"{'':28}{'reference':>12}{'vaelab':>12}{'ratio':>8}")
        ref, ours = summary["reference_seconds"], summary["vaelab_seconds"]
        print(f"{'process start to exit (s)':28}{ref:12.1f}{ours:12.1f}{ref / ours:8.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        return
    data_root = Path(args.data_root).resolve()
    if args.side:  # one side in this fresh process; the parent reads its JSON line
        print(json.dumps(run_side(args.side, data_root, args)))
        return
    sides = [s for s in SIDES if s in args.sides.split(",")]
    skipped = {}
    if "pythae" in sides and (why := pythae_missing()):
        print(f"pythae: skipped: {why}", file=sys.stderr)
        skipped["pythae"] = why
        sides.remove("pythae")
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side in sides:
            print(f"round {round_ + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
            results[side].append(run_in_subprocess(side, args))

    def median(name, key):
        return statistics.median(r[key] for r in results[name])

    summary: dict = {
        "machine": machine(),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "overrides": args.overrides,
        "sides": sides,
        "skipped": skipped,
    }
    print(f"\n{summary['machine']}; {args.epochs} epochs x {args.rounds} rounds, batch 128")
    for reason in skipped.values():
        print(f"pythae skipped: {reason}")
    if {"reference", "vaelab"} <= set(sides):
        summary |= reference_table(args, median)
    yardsticks = [s for s in ("plain", "pythae") if s in sides]
    if "vaelab_default" in sides and yardsticks:
        summary |= yardstick_table(yardsticks, median)
    summary |= {"runs": results, "vaelab_version": vaelab.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


def reference_table(args, median) -> dict:
    """vaelab (experiment=seed_reference) against the reference script: training batches."""
    ref_speed, our_speed = (median(n, "train_samples_per_sec") for n in ("reference", "vaelab"))
    summary = {
        "reference_train_samples_per_sec": ref_speed,
        "vaelab_train_samples_per_sec": our_speed,
        "speedup": our_speed / ref_speed,
        "reference_test_loss": median("reference", "test_loss"),
        "vaelab_test_loss": median("vaelab", "test_loss"),
        "reference_test_images_per_sec": median("reference", "test_images_per_sec"),
        "vaelab_test_images_per_sec": median("vaelab", "test_images_per_sec"),
        **(
            {
                "nll_k": args.nll_k,
                "nll_images": args.nll_images,
                "vaelab_nll_images_per_sec": median("vaelab", "nll_images_per_sec"),
                "vaelab_nll_seconds_for_10000_images": median(
                    "vaelab", "nll_seconds_for_10000_images"
                ),
            }
            if args.nll_images
            else {}
        ),
    }
    print(f"{'':28}{'reference':>12}{'vaelab':>12}{'ratio':>8}")
    print(f"{'train samples/s':28}{ref_speed:12.0f}{our_speed:12.0f}{our_speed / ref_speed:8.2f}")
    ref_test, our_test = summary["reference_test_loss"], summary["vaelab_test_loss"]
    print(f"{'test loss (nats/image)':28}{ref_test:12.2f}{our_test:12.2f}")
    ref_eval, our_eval = (summary[f"{n}_test_images_per_sec"] for n in ("reference", "vaelab"))
    print(f"{'test ELBO images/s':28}{ref_eval:12.0f}{our_eval:12.0f}{our_eval / ref_eval:8.2f}")
    if args.nll_images:
        per_sec, full = (
            summary[f"vaelab_nll_{key}"] for key in ("images_per_sec", "seconds_for_10000_images")
        )
        print(f"{f'NLL k={args.nll_k} images/s':28}{'-':>12}{per_sec:12.1f}")
        print(f"{'NLL, 10 000 test images':28}{'-':>12}{full:11.0f}s")
    return summary


def yardstick_table(yardsticks: list[str], median) -> dict:
    """vaelab's default run against the plain loop and pythae: fit samples/s, test loss."""
    ours = median("vaelab_default", "fit_samples_per_sec")
    summary = {
        "vaelab_default_fit_samples_per_sec": ours,
        "vaelab_default_test_loss": median("vaelab_default", "test_loss"),
    }
    print(
        f"\n{'55 000 / 5000 split':28}" + "".join(f"{s:>12}" for s in yardsticks) + "      vaelab"
    )
    speeds = {s: median(s, "fit_samples_per_sec") for s in yardsticks}
    losses = {s: median(s, "test_loss") for s in yardsticks}
    print(
        f"{'fit samples/s':28}"
        + "".join(f"{speeds[s]:12.0f}" for s in yardsticks)
        + f"{ours:12.0f}"
    )
    print(
        f"{'vaelab ratio':28}"
        + "".join(f"{ours / speeds[s]:12.2f}" for s in yardsticks)
        + f"{'':>12}"
    )
    print(
        f"{'test loss (nats/image)':28}"
        + "".join(f"{losses[s]:12.2f}" for s in yardsticks)
        + f"{summary['vaelab_default_test_loss']:12.2f}"
    )
    for s in yardsticks:
        summary |= {
            f"{s}_fit_samples_per_sec": speeds[s],
            f"{s}_test_loss": losses[s],
            f"vaelab_default_over_{s}": ours / speeds[s],
        }
    return summary


if __name__ == "__main__":
    main()
