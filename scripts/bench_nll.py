"""Time the importance-sampled NLL (``vaelab.evaluation.metrics.iwae_log_likelihood``) on
MNIST test images.

    python scripts/bench_nll.py [--ckpt PATH] [--k 5000] [--images 10000] [--max-rows 4096]
                                [--workers N] [--data-root DIR] [--device cpu] [--json FILE]

Without --ckpt a freshly initialised default model (784-256-256-32) is timed: the cost does
not depend on the weights. Prints the seconds, images per second, the NLL, the worker count
and the machine's load average (1, 5, 15 min) before and after: timings on a shared machine
are noisy.
With --images below 10000 it also prints the extrapolation to the full test set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from vaelab.data.files import ensure_files, load_split
from vaelab.evaluation.metrics import dataset_log_likelihood
from vaelab.lit.module import VAELitModule
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
