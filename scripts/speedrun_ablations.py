"""What each ingredient of the speedrun's recipe is worth: the speedrun, then the speedrun with
one ingredient removed (or one candidate added), each for the same time budget, and their
table in docs/results.md.

    python scripts/speedrun_ablations.py --data-root DIR [--budget-minutes 30] [--nll-k 5000]
        [--nll-images N] [--only NAME ...] [--seed N] [--log-dir logs/ablations]
        [--out docs/results.md] [--override KEY=VALUE ...] [--report-only]

Each line of the table is one command, run alone after the one before it (a run limited by
time shares the CPU with nothing):

    python train.py experiment=speedrun OVERRIDES trainer.max_time=BUDGET
        callbacks.test_metrics.nll_k=K callbacks.test_metrics.nll_images=N hydra.run.dir=...

The speedrun sizes its epochs to the budget itself (``callbacks.time_budget``), so every line
gets the same minutes of fit whatever its step costs. The test NLL is importance sampled with
``--nll-k`` samples on the first ``--nll-images`` test images (default: all, k=5000, the
literature table's estimator; a shorter budget may take fewer, the table says which). ``Δ`` is
the line's NLL minus the recipe's: what removing the ingredient costs (positive: the recipe
is better with it). The lines are ``ABLATIONS`` below, one per ingredient of
configs/experiment/speedrun.yaml's recipe; ``--only`` picks some. ``--report-only`` writes the
table from the runs already in ``--log-dir``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_results import ROOT, git_commit, machine, near_root, num, shown  # noqa: E402

# name: (what the line changes in the recipe, its overrides)
ABLATIONS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("nothing: the speedrun as configured", []),
    "no_iwae": (
        "the ELBO (one sample) instead of IWAE with k=5", ["model.objective=elbo", "model.k=1"],
    ),
    "no_cosine": (
        "a constant learning rate of 1e-3 instead of the cosine to 1e-4", ["lr_schedule=constant"],
    ),
    "burda_mlp": (
        "Burda et al.'s MLP, 784-200-200-50 tanh, instead of 300-300-50 ReLU",
        ["model.hidden_dims=[200,200]", "model.activation=tanh"],
    ),
    "hold_out_5000": ("5000 validation images held out instead of 1000", ["data.val_size=5000"]),
    "vampprior": (
        "a candidate: a VampPrior (500 pseudo-inputs) instead of N(0, I)", ["model=vampprior"],
    ),
}  # fmt: skip
START, END = "<!-- speedrun-ablations:start -->", "<!-- speedrun-ablations:end -->"


def budget_text(minutes: float) -> str:
    return time.strftime("00:%H:%M:%S", time.gmtime(round(minutes * 60)))


def command_of(name: str, args) -> list[str]:
    """The overrides of line ``name``: the recipe's changes, the budget and the estimator."""
    overrides = ["experiment=speedrun", *ABLATIONS[name][1]]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.data_root:
        overrides.append(f"paths.data_dir={near_root(Path(args.data_root))}")
    images = "null" if args.nll_images is None else str(args.nll_images)
    overrides += [
        *args.override,
        f"trainer.max_time={budget_text(args.budget_minutes)}",
        f"callbacks.test_metrics.nll_k={args.nll_k}",
        f"callbacks.test_metrics.nll_images={images}",
        f"hydra.run.dir={shown(args.log_dir / name)}",
    ]
    return overrides


def run_line(name: str, args) -> int:
    """Train line ``name`` into ``<log-dir>/name`` (replacing it); ``ablation.json`` beside."""
    run_dir = args.log_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = command_of(name, args)
    print(f"== {name}: python train.py {shlex.join(overrides)}", flush=True)
    start = time.time()
    status = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT).returncode
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "command": "python train.py " + shlex.join(overrides),
        "budget_minutes": args.budget_minutes,
        "nll_k": args.nll_k,
        "nll_images": args.nll_images,
        "machine": machine(),
        "commit": git_commit(),
        "date": datetime.datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - start, 1),
        "exit_status": status,
        "script": "python scripts/speedrun_ablations.py " + shlex.join(sys.argv[1:]),
    }
    (run_dir / "ablation.json").write_text(json.dumps(info, indent=2) + "\n")
    return status


def section(log_dir: Path) -> str:
    """The table between the markers, from the runs in ``log_dir``."""
    header = ["line", "what it changes", "test NLL", "Δ", "epochs", "fit (min)", "machine",
              "command"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    results = {}
    for name in ABLATIONS:
        info_path, metrics_path = log_dir / name / "ablation.json", log_dir / name / "metrics.json"
        if info_path.exists() and metrics_path.exists():
            results[name] = (
                json.loads(info_path.read_text()),
                json.loads(metrics_path.read_text()),
            )
    base = results.get("recipe", (None, {}))[1].get("test/nll")
    for name, (what, _) in ABLATIONS.items():
        if name not in results:
            lines.append(f"| `{name}` | {what} | not run yet | | | | | |")
            continue
        info, metrics = results[name]
        nll = metrics.get("test/nll")
        images = info["nll_images"] or "all 10 000"
        # of the figures as shown, so that the column is their difference to the last digit
        shown = nll is not None and base is not None
        delta = f"{round(nll, 2) - round(base, 2):+.2f}" if shown else ""
        cells = [
            f"`{name}`", what,
            f"{num(nll)} (k={info['nll_k']}, {images} images)" if nll is not None else "no NLL",
            delta, metrics.get("epochs", ""), f"{metrics.get('fit_seconds', 0) / 60:.1f}",
            info["machine"].split(";")[0], f"`{info['command']}`",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    budgets = sorted({info["budget_minutes"] for info, _ in results.values()})
    scripts = sorted({info["script"] for info, _ in results.values()})
    about = (
        f"Budget: {' and '.join(f'{b:g}' for b in budgets)} minutes of fit per line. Written by "
        + ", ".join(f"`{s}`" for s in scripts)
        + "."
        if results
        else "No line has run yet."
    )
    return "\n".join([START, "", about, "", *lines, "", END])


def write_report(log_dir: Path, out: Path) -> None:
    text = out.read_text() if out.exists() else ""
    block = section(log_dir)
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## speedrun ablations\n\n" + block + "\n"
    out.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", help="the folder holding MNIST/raw")
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--nll-k", type=int, default=5000)
    parser.add_argument("--nll-images", type=int, default=None, help="default: all")
    parser.add_argument("--only", nargs="+", choices=list(ABLATIONS), help="these lines only")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "ablations")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, every line")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.log_dir = args.log_dir.resolve()
    status = 0
    if not args.report_only:
        for name in args.only or list(ABLATIONS):
            status = run_line(name, args) or status
    write_report(args.log_dir, args.out)
    print(f"== the table: {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
