"""Run the literature rows (and the speedrun) and write their table into docs/results.md.

The rows are experiment configs (configs/experiment/), each faithful to its paper's model,
objective and data protocol (its header says how and where it departs):

    python scripts/literature_table.py --data-root DIR [--rows NAME ...]
        [--budget-minutes 30 | --epochs N | --full] [--device cpu|gpu] [--estimate-only]
        [--seed N] [--out docs/results.md] [--log-dir logs/literature] [--override KEY=VALUE ...]
        [--report-only]

Each row is one command, ``python train.py experiment=ROW trainer.max_epochs=N ...``, run into
``<log-dir>/ROW/0`` (a rerun replaces it; with ``--seed N``, ``seed=N`` into
``<log-dir>/ROW_seedN/0``, a further line of the table). Before it, three short calibration
runs (one epoch of n optimizer steps, one of 2n, two of n; n = ``--calibrate-steps``;
``<log-dir>/ROW/calibration``) measure on this machine the step time, what each epoch's end
adds (validation, checkpoints) and what a run spends once, which gives

- the budget: with ``--budget-minutes M`` (default 30), ``trainer.max_epochs`` is the number
  of whole epochs that fit in M minutes, less the once-per-run time, at the measured step time
  and epoch's-end time, and ``trainer.max_time``
  caps the fit at M minutes (a row the cap stops shows fewer epochs than planned; its
  compressed learning-rate stages are then truncated, which the table shows);
  ``--epochs N`` sets the epochs instead (no cap), ``--full`` the paper's length (3280 epochs;
  VampPrior: up to 2000 with early stopping; no cap);
- a row whose config sizes its own epochs to ``trainer.max_time`` (``callbacks.time_budget``:
  the speedrun) runs as its header's command, without ``trainer.max_epochs``, and with
  ``trainer.max_time`` only when ``--budget-minutes`` differs from its own; its calibration
  runs switch the budget off;
- the full-length estimate: the paper's epochs, each its steps at the measured step time and
  its end, and whether that fits in one 10-minute call of a lent GPU.
  ``--device gpu --estimate-only`` measures on a GPU and writes the estimates without
  training; a row that fits runs at full length there with ``--rows ROW --device gpu --full``.

The report (between the markers in docs/results.md, the rest of the file kept) holds per row
the paper's number, ours (test NLL, k=5000, all test images, the best epoch by validation
loss), the gap, epochs, fit and wall time, machine and the exact command, and a figure of
validation loss against fit time (``docs/images/literature.png``, from the runs' TensorBoard
events). A row never run reads "not run yet".
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_results import ROOT, git_commit, machine, near_root, num, shown  # noqa: E402

# row: (what, the paper and its number in nats or None, the paper's epochs)
ROWS: dict[str, tuple[str, str, float | None, int]] = {
    "burda_vae_1l": ("VAE, 1 stochastic layer, k=1", "Burda et al. 2016, Table 1", 86.76, 3280),
    "burda_iwae5_1l": ("IWAE, 1 stochastic layer, k=5", "Burda et al. 2016, Table 1", 85.54, 3280),
    "burda_iwae50_1l": (
        "IWAE, 1 stochastic layer, k=50", "Burda et al. 2016, Table 1", 84.78, 3280,
    ),
    "burda_vae_2l": ("VAE, 2 stochastic layers, k=1", "Burda et al. 2016, Table 1", 85.33, 3280),
    "burda_iwae5_2l": ("IWAE, 2 stochastic layers, k=5", "Burda et al. 2016, Table 1", 83.89, 3280),
    "tomczak_vampprior": (
        "VampPrior, K=500, gated MLP, static MNIST", "Tomczak & Welling 2018", 85.57, 2000,
    ),
    "speedrun": ("speedrun (goal: <= 87.0)", "Burda et al.'s VAE after 3280 epochs", 86.76, 0),
}  # fmt: skip
START, END = "<!-- literature-table:start -->", "<!-- literature-table:end -->"
GPU_CALL_SECONDS = 600
FIGURE = ROOT / "docs" / "images" / "literature.png"


def train(overrides: list[str]) -> int:
    return subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT).returncode


def steps_per_epoch(row: str, extra: list[str]) -> int:
    """Optimizer steps in one training epoch of ``row`` (its batch size, hold-out and any
    ``limit_train_batches``), from its composed config and the training file."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import vaelab.runs  # noqa: F401  (registers the config resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={row}", *extra])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = len(datamodule.train_dataloader())
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = max(1, int(batches * limit))
    return math.ceil(batches / cfg.trainer.get("accumulate_grad_batches", 1))


def own_budget(row: str, extra: list[str]) -> str | None:
    """The row's own ``trainer.max_time`` when its config sizes its epochs to it
    (``callbacks.time_budget``), else None."""
    from hydra import compose, initialize_config_dir

    import vaelab.runs  # noqa: F401  (registers the config resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={row}", *extra])
    if cfg.callbacks.get("time_budget") is None:
        return None
    return cfg.trainer.get("max_time")


NO_BUDGET = ["callbacks.time_budget=null", "trainer.max_time=null"]


def calibration_run(row: str, base: list[str], steps: int, epochs: int, out: Path) -> float | None:
    """``fit_seconds`` of ``epochs`` epochs of ``steps`` optimizer steps of ``row`` into
    ``out`` (None if the run failed): the row's own callbacks, logger and validation, as in the
    run it calibrates, no test."""
    overrides = [
        f"experiment={row}", *base, f"trainer.max_epochs={epochs}",
        f"trainer.limit_train_batches={steps}", "test=false", f"hydra.run.dir={shown(out)}",
    ]  # fmt: skip
    status = train(overrides)
    if status != 0:
        print(f"== {row}: the calibration run failed (exit status {status})", flush=True)
        return None
    return json.loads((out / "metrics.json").read_text()).get("fit_seconds")


def calibrate(row: str, base: list[str], per_epoch: int, args) -> dict:
    """Seconds per optimizer step and per epoch's end of ``row`` on this machine, from three
    short runs (n = ``--calibrate-steps``; ``<log-dir>/ROW/calibration``): one epoch of n
    steps, one of 2n, two of n. What a run spends once (start-up, data, the first steps'
    warm-up, the sanity check, the end of fit) cancels in their differences, which a single
    run would count as step time; the third run gives what each epoch adds to its steps
    (validation, checkpoints, the epoch's logging).
    ``fixed_seconds`` is the once-per-run part. A difference that is not positive (runs too
    short to time) gives the longer run's seconds per step, an upper bound, and no epoch
    cost. ``per_epoch``: the row's optimizer steps in one epoch."""
    n = max(1, min(args.calibrate_steps, per_epoch // 2))
    out = args.log_dir / row / "calibration"
    runs = [(n, 1, "short"), (2 * n, 1, "long"), (n, 2, "two_epochs")]
    seconds = [calibration_run(row, base, s, e, out / name) for s, e, name in runs]
    record = {"runs": [{"steps": steps, "epochs": epochs} for steps, epochs, _ in runs]}
    if None in seconds:
        return {**record, "seconds": seconds, "status": 1, "seconds_per_step": None}
    short, long, two = seconds
    step = (long - short) / n if long > short else long / (2 * n)
    epoch = max(0.0, two - short - n * step)
    fixed = max(0.0, short - n * step - epoch)
    return {**record, "seconds": [round(t, 3) for t in seconds], "status": 0,
            "seconds_per_step": step, "seconds_per_epoch_end": round(epoch, 3),
            "fixed_seconds": round(fixed, 3)}  # fmt: skip


def epoch_end(cal: dict) -> str:
    """' and S s at each epoch's end' when the calibration measured it, else ''."""
    seconds = cal.get("seconds_per_epoch_end")
    return "" if seconds is None else f" and {seconds:.2f} s at each epoch's end"


def plan(row: str, base: list[str], args) -> dict:
    """The row's calibration, steps per epoch, budget (epochs, cap) and full-length estimate."""
    per_epoch = steps_per_epoch(row, base)
    own = own_budget(row, base)
    cal = calibrate(row, base + (NO_BUDGET if own else []), per_epoch, args)
    paper_epochs = ROWS[row][3]
    info: dict = {"steps_per_epoch": per_epoch, "calibration": cal, "has_budget": bool(own)}
    step = cal["seconds_per_step"]
    if paper_epochs and step:
        full = paper_epochs * (per_epoch * step + cal.get("seconds_per_epoch_end", 0.0))
        info["full_length"] = {"epochs": paper_epochs, "steps": paper_epochs * per_epoch,
                               "seconds": round(full, 1),
                               "fits_one_gpu_call": full <= GPU_CALL_SECONDS}  # fmt: skip
    if args.full:
        info["epochs"], info["max_time"] = paper_epochs or None, None
    elif args.epochs:
        info["epochs"], info["max_time"] = args.epochs, None
    elif own:  # the row sizes its epochs itself, to its own budget unless told another
        budget = time.strftime("00:%H:%M:%S", time.gmtime(args.budget_minutes * 60))
        info["epochs"], info["max_time"] = None, None if budget == own else budget
        info["own_budget"] = True
    elif step:
        budget = args.budget_minutes * 60
        # after the once-per-run part, each epoch's steps and what its end adds
        usable = budget - cal.get("fixed_seconds", 0.0)
        epoch_seconds = per_epoch * step + cal.get("seconds_per_epoch_end", 0.0)
        info["epochs"] = max(1, int(usable // epoch_seconds))
        info["max_time"] = time.strftime("00:%H:%M:%S", time.gmtime(budget))
    return info


def run_row(row: str, args) -> int:
    """Calibrate, then run ``row`` on its budget into ``<log-dir>/row/0``; writes
    ``literature.json`` beside it. Returns the exit status."""
    row_dir = args.log_dir / (row if args.seed is None else f"{row}_seed{args.seed}")
    shutil.rmtree(row_dir, ignore_errors=True)
    row_dir.mkdir(parents=True)
    base = [*(["trainer=gpu"] if args.device == "gpu" else [])]
    base += [] if args.seed is None else [f"seed={args.seed}"]
    if args.data_root:
        base.append(f"paths.data_dir={near_root(args.data_root)}")
    base += args.override
    info = plan(row, base, args)
    overrides = [f"experiment={row}", *base]
    if info.get("epochs"):
        if info["has_budget"]:  # a number of epochs instead of the row's own budget
            overrides += NO_BUDGET
        overrides.append(f"trainer.max_epochs={info['epochs']}")
    if info.get("max_time"):
        overrides.append(f"trainer.max_time={info['max_time']}")
    overrides.append(f"hydra.run.dir={shown(row_dir / '0')}")
    command = "python train.py " + shlex.join(overrides)
    script = "python scripts/literature_table.py " + shlex.join(sys.argv[1:])
    info.update(
        command=command, machine=machine(), commit=git_commit(), device=args.device, script=script
    )
    if args.estimate_only:
        info["estimate_only"] = True
        (row_dir / "literature.json").write_text(json.dumps(info, indent=2) + "\n")
        return info["calibration"]["status"]
    print(f"== {row}: {command}", flush=True)
    start = time.time()
    status = train(overrides)
    info.update(
        date=datetime.datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds"),
        wall_seconds=round(time.time() - start, 1),
        exit_status=status,
    )
    (row_dir / "literature.json").write_text(json.dumps(info, indent=2) + "\n")
    return status


def val_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(seconds since the first logged value, val/loss) from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times, values = [], []
    # one reader per folder: it reads every events file there (a folder holds several, e.g.
    # the HParams summary's), so a reader per file would repeat the curve
    folders = sorted({p.parent for p in run_dir.glob("tensorboard/**/events.out.tfevents*")})
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        if "val/loss" not in tags:
            continue
        start = min(acc.Scalars(t)[0].wall_time for t in tags if acc.Scalars(t))
        for event in acc.Scalars("val/loss"):
            times.append(event.wall_time - start)
            values.append(event.value)
    return times, values


def figure(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> bool:
    """Validation loss against fit time, one line per row; False when no row has a curve."""
    curves = {row: c for row, c in curves.items() if c[0]}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, (times, values) in curves.items():
        ax.plot([t / 60 for t in times], values, label=row)
    ax.set_xlabel("fit time (minutes)")
    ax.set_ylabel("validation loss, −ELBO (nats)")
    ax.set_title("Literature rows: validation loss against fit time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def minutes(seconds) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def section(log_dir: Path, figure_path: Path, out: Path) -> str:
    """The report between the markers: the table, the estimates and the figure."""
    header = ["row", "paper", "paper NLL", "ours: test NLL", "gap", "epochs", "fit (min)",
              "wall (min)", "machine", "command"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    estimates, curves = [], {}
    entries = []  # (row, its folder under log_dir): each row, then its runs with --seed
    for row in ROWS:
        seeds = sorted(p.name for p in log_dir.glob(f"{row}_seed*") if p.is_dir())
        entries += [(row, row), *((row, name) for name in seeds)]
    for row, name in entries:
        what, paper, number, _ = ROWS[row]
        if name != row:
            what += f", seed {name.rsplit('_seed', 1)[1]}"
        info_path = log_dir / name / "literature.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else None
        run_dir = log_dir / name / "0"
        metrics_path = run_dir / "metrics.json"
        paper_cell = num(number) if number is not None else "not quoted"
        if info and "full_length" in info:
            full = info["full_length"]
            fits = "fits" if full["fits_one_gpu_call"] else "does not fit"
            estimates.append(
                f"- `{name}`: {full['epochs']} epochs = {full['steps']} steps at "
                f"{1 / info['calibration']['seconds_per_step']:.1f} steps/s"
                f"{epoch_end(info['calibration'])} on "
                f"{info['device']} ({info['machine'].split(';')[0]}): about "
                f"{minutes(full['seconds'])} min; {fits} in one {GPU_CALL_SECONDS // 60}-minute "
                "call"
            )
        elif info and ROWS[row][3]:
            estimates.append(f"- `{name}`: no estimate (its calibration run failed)")
        if not info or info.get("estimate_only") or not metrics_path.exists():
            cells = [f"`{name}`: {what}", paper, paper_cell, "not run yet", "", "", "", "", "", ""]
        else:
            m = json.loads(metrics_path.read_text())
            nll = m.get("test/nll")
            gap = f"{nll - number:+.2f}" if nll is not None and number is not None else ""
            planned = info.get("epochs")
            epochs = str(m.get("epochs", ""))
            if planned and m.get("epochs") is not None and m["epochs"] < planned:
                epochs += f" of {planned} (stopped early)"
            if info.get("own_budget"):
                epochs += " (sized to the budget)"
            cells = [
                f"`{name}`: {what}", paper, paper_cell,
                f"{num(nll)} (k={m.get('test/nll_k', 0):.0f})" if nll is not None else "no NLL",
                gap, epochs, minutes(m.get("fit_seconds")), minutes(info.get("wall_seconds")),
                info["machine"].split(";")[0], f"`{info['command']}`",
            ]  # fmt: skip
            curves[name] = val_curve(run_dir)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    text = [
        START,
        "",
        *lines,
        "",
        "**Full length** (the paper's epochs at the step time measured before each row's "
        "run; a GPU call lasts at most 10 minutes):",
        "",
        *(estimates or ["- no row calibrated yet"]),
    ]
    if figure(curves, figure_path):
        rel = os.path.relpath(figure_path, out.parent)
        text += ["", f"![validation loss against fit time]({rel})"]
    return "\n".join([*text, "", END])


def write_report(out: Path, body: str) -> None:
    """Replace the text between the markers of ``out`` with ``body`` (markers included); a
    file without them gets the section appended."""
    text = out.read_text() if out.exists() else "# Measured results of the experiments\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## literature\n\n" + body + "\n"
    out.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=[])
    parser.add_argument("--data-root", type=Path, help="folder holding MNIST/raw (or DATA_ROOT)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-minutes", type=float, default=30.0,
        help="fit time per row: epochs sized from a measured step time",
    )  # fmt: skip
    budget.add_argument("--epochs", type=int, help="epochs per row instead of a time budget")
    budget.add_argument("--full", action="store_true", help="the paper's length")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--seed", type=int, help="seed=N for the rows, into <log-dir>/<row>_seedN")
    parser.add_argument("--calibrate-steps", type=int, default=300)
    parser.add_argument(
        "--estimate-only", action="store_true",
        help="calibrate and write the full-length estimates, no training",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "literature")
    parser.add_argument("--override", nargs="+", action="extend", default=[],
                        help="Hydra overrides added to every train.py command")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="rewrite the report only")
    args = parser.parse_args()
    args.log_dir = args.log_dir.resolve()
    failed = []
    if not args.report_only:
        for row in args.rows or ROWS:
            if run_row(row, args) != 0:
                failed.append(row)
    write_report(args.out, section(args.log_dir, args.figure, args.out))
    print(f"table written to {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
