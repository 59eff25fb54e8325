"""Run the experiments on a short budget and write docs/results.md from them.

The experiments are those of docs/techniques.md (configs/experiment/).

    python scripts/reproduce_results.py --data-root DIR [--epochs N] [--only NAME ...]
        [--out docs/results.md] [--log-dir logs/reproduce] [--override KEY=VALUE ...]
        [--report-only]

Each experiment runs as the user would run it, ``python train.py experiment=NAME
trainer.max_epochs=N ...``, into its own folder ``<log-dir>/NAME/`` (jobs 0, 1, ...; a
rerun replaces it), where ``reproduce.json`` keeps the command, the date, the machine and the
wall time. The report is then written from every experiment found under ``<log-dir>``, so
runs of ``--only`` add up; ``--report-only`` rewrites it without training.

Default budgets, in epochs per job: exercise_architecture 5 (20 jobs), posterior_collapse 12
(4 jobs; 12 epochs of 430 steps let the 5000-step KL warm-up finish), binarized_nll 20 (1 job,
plus 1.5-2 minutes for its k=5000 NLL on 2 CPU cores), prior_comparison 10 (2 jobs, each with
a k=5000 NLL). An experiment not run this time keeps its section of the existing report.
``--epochs`` sets one budget for all; ``--override`` adds Hydra overrides to every command
(e.g. ``trainer=gpu``; for a dry run ``trainer.limit_train_batches=2
trainer.limit_test_batches=1``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from vaelab.runs.sweep import collect_jobs, swept_params

ROOT = Path(__file__).resolve().parents[1]
BURDA = (
    "Burda et al. (2015) report 86.76 nats for a one-stochastic-layer VAE (784-200-200-50, "
    "tanh) after 3280 epochs, 84.78 for IWAE with k=50"
)
# the section that scripts/literature_table.py writes, kept when this script rewrites the file
LITERATURE = "literature"
# name: (default epochs per job, multirun?, what it compares)
EXPERIMENTS = {
    "exercise_architecture": (
        5,
        True,
        "The reference tutorial's exercise 1: hidden width 256/512 x latent size 2/8/32/64/128 "
        "x batch norm off/on, on grey-level MNIST.",
    ),
    "posterior_collapse": (
        12,
        True,
        "KL weight beta = 1 (`kl=constant`) vs linear warm-up vs cyclical annealing vs free "
        "bits, at latent size 128 where units collapse.",
    ),
    "binarized_nll": (
        20,
        False,
        "Dynamically binarized MNIST, Bernoulli decoder, test NLL importance sampled with "
        f"k=5000: the likelihood protocol of the literature. {BURDA}.",
    ),
    "prior_comparison": (
        10,
        True,
        "The standard normal prior (`model=vae`) against VampPrior (`model=vampprior`, 500 "
        "pseudo-inputs; Tomczak & Welling 2018) with the same budget, on the protocol of "
        "binarized_nll (dynamically binarized MNIST, Bernoulli decoder, k=5000 NLL). For "
        "VampPrior the test KL is a one-sample Monte Carlo estimate.",
    ),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text().splitlines():  # the first processor's fields
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        cpu = fields.get("model name", cpu)
        if "cpu family" in fields and "model" in fields:  # a VM's name may hide the kind
            cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return f"{commit} (with uncommitted changes)" if commit and dirty else commit or "unknown"


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def near_root(path: Path) -> str:
    """``path`` relative to the repository root when it lies in the root's parent folder
    (``../shared/data``), so the report's commands read the same from any clone; else the
    absolute path. Links are kept as given (``../shared`` may be a link to elsewhere)."""
    resolved = Path(os.path.abspath(path))
    if not resolved.is_relative_to(ROOT.parent):
        return str(resolved)
    return os.path.relpath(resolved, ROOT)


def run_experiment(name: str, epochs: int, args) -> int:
    """Run ``train.py experiment=name`` into ``<log-dir>/name``; returns its exit status."""
    exp_dir = args.log_dir / name
    shutil.rmtree(exp_dir, ignore_errors=True)
    multirun = EXPERIMENTS[name][1]
    out = f"hydra.sweep.dir={shown(exp_dir)}" if multirun else f"hydra.run.dir={shown(exp_dir)}/0"
    overrides = [f"experiment={name}", f"trainer.max_epochs={epochs}", out]
    if args.data_root:
        overrides.append(f"paths.data_dir={near_root(args.data_root)}")
    overrides += args.override
    print(f"== {name}: python train.py {shlex.join(overrides)}", flush=True)
    commit = git_commit()  # the code the run imports: edits made while it runs do not count
    load_before, start = os.getloadavg(), time.time()
    status = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT).returncode
    exp_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "command": "python train.py " + shlex.join(overrides),
        "epochs": epochs,
        "extra_overrides": args.override,
        "date": datetime.datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - start, 1),
        "exit_status": status,
        "machine": machine(),
        "commit": commit,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "script": "python scripts/reproduce_results.py " + shlex.join(sys.argv[1:]),
    }
    (exp_dir / "reproduce.json").write_text(json.dumps(info, indent=2) + "\n")
    return status


def load_jobs(exp_dir: Path) -> list[dict]:
    """``vaelab.runs.sweep.collect_jobs`` rows, each with what metrics.json lacks: ``cfg`` (the
    job's composed config), ``wall`` (seconds from Hydra writing the config to metrics.json)
    and ``steps`` (optimizer steps, from last.ckpt)."""
    rows = collect_jobs(exp_dir)
    for row in rows:
        job_dir = exp_dir / row["job"]
        config, metrics = job_dir / ".hydra" / "config.yaml", job_dir / "metrics.json"
        last = job_dir / "checkpoints" / "last.ckpt"
        row["cfg"] = yaml.safe_load(config.read_text())
        row["wall"] = metrics.stat().st_mtime - config.stat().st_mtime if row["metrics"] else None
        row["steps"] = (
            torch.load(last, map_location="cpu", weights_only=True).get("global_step")
            if last.exists()
            else None
        )
    return rows


def num(value, digits: int = 2) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def table(rows: list[dict], params: list[str]) -> list[str]:
    header = [
        "job", *params, "epochs", "steps", "fit (s)", "job (s)", "test −ELBO", "test recon",
        "test KL", "test NLL", "NLL k", "active units", "status",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row["metrics"]
        nll = num(m.get("test/nll"))
        if nll and not m.get("test/nll_normalized"):
            nll += " (!)"
        units = m.get("test/active_units")
        status = row["status"] if row["status"] == "ok" else f"failed: {row['error']}"
        cells = [
            row["job"],
            *(row["params"].get(p, "") for p in params),
            str(m.get("epochs", "")),
            str(row["steps"] if row["steps"] is not None else ""),
            num(m.get("fit_seconds"), 1),
            num(row["wall"], 1),
            num(m.get("test/loss")),
            num(m.get("test/recon")),
            num(m.get("test/kl")),
            nll,
            num(m.get("test/nll_k"), 0),
            f"{units:.0f} / {row['cfg']['model']['latent_dim']}" if units is not None else "",
            status,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def note(name: str, rows: list[dict], params: list[str]) -> str:
    """What the numbers show, and what this budget cannot show; every number from the run."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return "No job finished: there are no numbers to read."
    budget = "/".join(map(str, sorted({r["metrics"]["epochs"] for r in ok}))) + " epoch(s)"
    if name == "prior_comparison":
        by_model = {r["params"].get("model"): r["metrics"] for r in ok}
        if not {"vae", "vampprior"} <= set(by_model) or any(
            m.get("test/nll") is None for m in by_model.values()
        ):
            return f"Not both jobs finished with a test NLL ({budget}): nothing to compare."
        vae, vamp = by_model["vae"], by_model["vampprior"]
        better = "lower" if vamp["test/nll"] < vae["test/nll"] else "higher"
        return (
            f"After {budget} per job, VampPrior's test NLL is {vamp['test/nll']:.2f} nats "
            f"against {vae['test/nll']:.2f} for the standard prior "
            f"({abs(vamp['test/nll'] - vae['test/nll']):.2f} nats {better}; k=5000), its test "
            f"−ELBO {vamp['test/loss']:.2f} against {vae['test/loss']:.2f}, with "
            f"{vamp['test/active_units']:.0f} and {vae['test/active_units']:.0f} active units. "
            "One seed each and a short budget: the difference ranks the two priors at this "
            "budget only; the job times say what the mixture prior costs."
        )
    if name == "binarized_nll":
        m, model = ok[0]["metrics"], ok[0]["cfg"]["model"]
        arch = "-".join(map(str, [784, *model["hidden_dims"], model["latent_dim"]]))
        if m.get("test/nll") is None:
            return f"No test NLL was computed ({budget}): was callbacks.test_metrics.nll_k 0?"
        normalized = m.get("test/nll_normalized")
        kind = "binary pixels: normalized" if normalized else "NOT a normalized likelihood"
        return (
            f"After {budget} ({m['epochs'] / 3280:.2%} of Burda et al.'s 3280), the {arch} "
            f"VAE reaches a test NLL of {m['test/nll']:.2f} nats (k={m['test/nll_k']:.0f}; "
            f"{kind}); its test −ELBO is {m['test/loss']:.2f}, "
            f"{m['test/loss'] - m['test/nll']:.2f} nats above. {BURDA}. The gap to 86.76 "
            "mixes the shorter training with the different architecture (sizes; ReLU instead of "
            "tanh): this run cannot tell them apart."
        )

    def which(row: dict) -> str:
        return ", ".join(f"{p}={row['params'].get(p)}" for p in params) or f"job {row['job']}"

    best = min(ok, key=lambda r: r["metrics"]["test/loss"])
    worst = max(ok, key=lambda r: r["metrics"]["test/loss"])
    units = [r["metrics"]["test/active_units"] for r in ok]
    text = (
        f"With {budget} per job, the lowest test −ELBO is {best['metrics']['test/loss']:.2f} "
        f"nats ({which(best)}), the highest {worst['metrics']['test/loss']:.2f} "
        f"({which(worst)}); active units range from {min(units):.0f} to {max(units):.0f}. "
    )
    if name != "posterior_collapse":
        return text + (
            "This ranks the configurations by how far they get within this budget, not by "
            "where they would converge; the wall times say what each costs on the machine above."
        )
    for row in ok:
        if row["params"].get("kl") == "linear_warmup" and row["steps"] is not None:
            warmup = row["cfg"]["model"]["kl_warmup_steps"]
            done = "reached" if row["steps"] >= warmup else "had not reached"
            text += (
                f"The linear warm-up raises beta to 1 over {warmup} steps: after its "
                f"{row['steps']} steps it {done} it. "
            )
    return text + (
        "So short a run shows how the schedules start, not where they converge; the cyclical "
        "schedule spreads its cycles over whatever number of steps the run has."
    )


def existing_sections(path: Path) -> dict[str, list[str]]:
    """The lines of each ``## name`` section of an earlier report at ``path``."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


def report(log_dir: Path, previous: Path | None = None) -> str:
    lines = [
        "# Measured results of the experiments",
        "",
        "Written by `scripts/reproduce_results.py` (its docstring says how to rerun it): every "
        "number below comes from the run whose command is given, on short CPU budgets far "
        "from convergence. Losses are in nats per image on the test split (MNIST's 10 000 "
        "test images unless an override says otherwise), for the "
        "best checkpoint by `val/loss`: **test −ELBO** is `test/loss` = recon + KL (beta = 1, "
        "one z per image), so the ELBO is minus it; **test NLL** is `test/nll`, -log p(x) "
        "importance sampled with k samples (the IWAE bound; `(!)` when the Bernoulli decoder "
        "met grey-level pixels, so that it is not a normalized likelihood); **active units** "
        "have Var_x(E_q[z_u|x]) > 0.01 (of the latent size). **steps**: optimizer steps; "
        "**fit**: `fit_seconds` (training, validation and its figures); **job**: the job's "
        "whole wall time, from its start to its metrics.json (data, fit, test and NLL).",
    ]
    kept = existing_sections(previous) if previous is not None else {}
    for name, (_, _, what) in EXPERIMENTS.items():
        exp_dir = log_dir / name
        if not (exp_dir / "reproduce.json").exists():
            if name in kept:  # not run this time: its earlier section, as it was
                lines += ["", f"## {name}", *kept[name]]
                while lines[-1] == "":
                    lines.pop()
            continue
        info = json.loads((exp_dir / "reproduce.json").read_text())
        rows = load_jobs(exp_dir)
        params = swept_params(rows) if len(rows) > 1 else []
        load = " → ".join(map(str, info["load_average"]))
        lines += [
            "",
            f"## {name}",
            "",
            what,
            "",
            f"- command: `{info['command']}`",
            f"- budget: `trainer.max_epochs={info['epochs']}` per job"
            + (f", with `{' '.join(info['extra_overrides'])}`" if info["extra_overrides"] else ""),
            f"- run {info['date']} by `{info['script']}`, commit {info['commit']}: "
            f"{info['wall_seconds']:.0f} s in all, exit status {info['exit_status']}",
            f"- machine: {info['machine']}; load average (1 min) {load}",
            "",
            *table(rows, params),
            "",
            note(name, rows, params),
        ]
    if LITERATURE in kept:  # written by scripts/literature_table.py: kept as it is
        lines += ["", f"## {LITERATURE}", *kept[LITERATURE]]
        while lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per job (default: per experiment)")
    parser.add_argument("--data-root", type=Path, help="folder holding MNIST/raw (or DATA_ROOT)")
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "reproduce")
    parser.add_argument("--override", nargs="+", action="extend", default=[],
                        help="Hydra overrides added to every train.py command")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="rewrite the report only")
    args = parser.parse_args()
    args.log_dir = args.log_dir.resolve()
    failed = []
    if not args.report_only:
        for name in args.only or EXPERIMENTS:
            if run_experiment(name, args.epochs or EXPERIMENTS[name][0], args) != 0:
                failed.append(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(args.log_dir, args.out))
    print(f"report written to {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
