"""Time the importance-sampled NLL (``vaelab.evaluation.metrics.iwae_log_likelihood``) on
MNIST test images.

    python scripts/bench_nll.py [--ckpt PATH] [--k 5000] [--images 10000] [--max-rows 4096]
                                [--workers N] [--data-root DIR] [--device cpu] [--json FILE]
    python scripts/bench_nll.py --nets vae,vampprior --images 200 --rounds 3

Without --ckpt a freshly initialised default model (784-256-256-32) is timed: the cost does
not depend on the weights. ``--nets`` times freshly initialised variants with their default
arguments (``vae``, ``vampprior``, ``iaf``, ``hvae``: the classes of configs/model/<name>.yaml),
alternating them for ``--rounds`` rounds, and prints each one's median and its ratio to the
first. Prints the seconds, images per second, the NLL, the worker count
and the machine's load average (1, 5, 15 min) before and after: timings on a shared machine
are noisy.
With --images below 10000 it also prints the extrapolation to the full test set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from vaelab.data.files import ensure_files, load_split
from vaelab.evaluation.metrics import dataset_log_likelihood
from vaelab.lit.module import VAELitModule, build_net
from vaelab.science.variants.vae import VAE

ROOT = Path(__file__).resolve().parents[1]


def test_images(data_root: Path, n: int) -> torch.Tensor:
    paths = ensure_files(data_root / "MNIST" / "raw", download_missing=False)
    images, _ = load_split(paths, "test", None)
    return torch.from_numpy(images[:n].copy()).unsqueeze(1).float() / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--max-rows", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=100, help="images per task")
    parser.add_argument("--workers", type=int, default=None, help="default: torch threads")
    default_root = os.environ.get("DATA_ROOT", str(ROOT / "data"))
    parser.add_argument("--data-root", type=Path, default=Path(default_root))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--nets", default=None, help="e.g. vae,vampprior: compare variants")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.nets:
        compare(args)
        return

    device = torch.device(args.device)
    if args.ckpt:
        model = VAELitModule.load_from_checkpoint(args.ckpt, map_location=device)
        net = model.net.eval()
    else:
        torch.manual_seed(0)
        net = VAE().eval().to(device)
    x = test_images(args.data_root, args.images).to(device)

    load_before = os.getloadavg()
    start = time.perf_counter()
    nll = -dataset_log_likelihood(net, x, args.k, args.max_rows, args.batch, workers=args.workers)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "k": args.k,
        "images": len(x),
        "max_rows": args.max_rows,
        "seconds": round(seconds, 2),
        "images_per_sec": round(len(x) / seconds, 2),
        "seconds_for_10000_images": round(seconds * 10000 / len(x), 1),
        "nll": round(float(nll.mean()), 3),
        "workers": args.workers or torch.get_num_threads(),
        "device": str(device),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "checkpoint": str(args.ckpt) if args.ckpt else "random default model",
    }
    for key, value in result.items():
        print(f"{key:26s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def variant(name: str, device: torch.device):
    """A freshly initialised network of configs/model/<name>.yaml's class, default arguments
    (but the default model's widths and latent size where the variant keeps them)."""
    import yaml  # the config's `net` key only: no Hydra needed

    cfg = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    target = cfg.get("net", "vaelab.science.variants.vae.VAE")
    torch.manual_seed(0)
    return build_net(target, {}).eval().to(device)


def compare(args) -> None:
    """Time the NLL of several variants in alternation; medians and ratios to the first."""
    device = torch.device(args.device)
    x = test_images(args.data_root, args.images).to(device)
    names = args.nets.split(",")
    nets = {name: variant(name, device) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, net in nets.items():
            start = time.perf_counter()
            dataset_log_likelihood(net, x, args.k, args.max_rows, args.batch, workers=args.workers)
            times[name].append(time.perf_counter() - start)
    first = statistics.median(times[names[0]])
    print(f"{'net':12s} {'median s':>9s} {'ratio':>6s}   (k={args.k}, {len(x)} images)")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:12s} {median:9.2f} {median / first:6.2f}")


if __name__ == "__main__":
    main()
