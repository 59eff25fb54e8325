#!/usr/bin/env bash
# The GPU checks in one command, under 9 minutes on one GPU: the gpu tests, the throughput
# benchmark on the GPU (against the reference script, the plain PyTorch loop and, where
# pythae imports, pythae's trainer), the default fit again at model.steps_per_call=1 (the
# optimizer steps/s at 1 and at the default), and the default 20-epoch run as a user starts it on the GPU; the figures
# go to <out>/gpu_check.md (and .json, with the logs beside them).
#
#   bash scripts/gpu_check.sh prepare [DATA_ROOT]   # where pip works: wheels + MNIST into .gpu/
#   bash scripts/gpu_check.sh [OUT_DIR]              # on the GPU machine (no network needed)
#
# `prepare` downloads the pure-Python packages that a machine with torch, lightning,
# torchmetrics, tensorboard and matplotlib may lack (hydra-core, omegaconf, antlr4, pooch,
# platformdirs) as wheels into .gpu/wheels, and copies MNIST's four files into .gpu/data;
# .gpu/ is git-ignored. The check installs the wheels into a temporary dir when hydra is
# missing, and imports vaelab from src/. ACCELERATOR=cpu EPOCHS=1 BENCH_EPOCHS=1 NLL_IMAGES=100
# runs the same steps, shorter, on a CPU (to try the script itself).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = prepare ]; then
  data_root=${2:-${DATA_ROOT:-../shared/data}}
  mkdir -p .gpu/wheels .gpu/data/MNIST/raw
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .gpu/wheels \
    hydra-core==1.3.8 omegaconf==2.3.1 pooch==1.9.0 platformdirs==4.14.8
  # antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 requires) is published as source only
  $PY -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .gpu/wheels
  cp "$data_root"/MNIST/raw/*-ubyte.gz .gpu/data/MNIST/raw/
  ls .gpu/wheels .gpu/data/MNIST/raw
  exit 0
fi

out=$(realpath -m "${1:-gpu_check_out}")
mkdir -p "$out"
ACCELERATOR=${ACCELERATOR:-gpu}
EPOCHS=${EPOCHS:-20}
BENCH_EPOCHS=${BENCH_EPOCHS:-3}
NLL_IMAGES=${NLL_IMAGES:-10000}
DEVICE=$([ "$ACCELERATOR" = gpu ] && echo cuda || echo cpu)
data=$(realpath .gpu/data)
[ -f "$data/MNIST/raw/train-images-idx3-ubyte.gz" ] || {
  echo "error: no MNIST in .gpu/data; run 'bash scripts/gpu_check.sh prepare' first" >&2; exit 2; }
if ! $PY -c "import hydra, omegaconf, pooch" 2>/dev/null; then
  site=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/wheels/*.whl
  export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DATA_ROOT="$data"
logs=$(mktemp -d)
step() { echo "== $1 ($(date +%H:%M:%S))"; }

step "machine"
$PY - <<'PY' | tee "$out/machine.txt"
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"{gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}")
PY

step "gpu tests"
start=$SECONDS
set +e
$PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}
set -e
tests_seconds=$((SECONDS - start))

step "throughput benchmark ($BENCH_EPOCHS epochs, reference, plain loop, pythae and vaelab on $DEVICE)"
$PY scripts/benchmark.py --epochs "$BENCH_EPOCHS" --rounds 1 --device "$DEVICE" --data-root "$data" \
  --nll-images "$NLL_IMAGES" --json "$out/benchmark.json" 2>&1 | tee "$out/benchmark.log" | tail -n 8

step "one optimizer step per call ($BENCH_EPOCHS epochs, plain loop and vaelab at model.steps_per_call=1)"
$PY scripts/benchmark.py --epochs "$BENCH_EPOCHS" --rounds 1 --device "$DEVICE" --data-root "$data" \
  --sides plain,vaelab_default --json "$out/steps_per_call_1.json" model.steps_per_call=1 2>&1 \
  | tee "$out/steps_per_call_1.log" | tail -n 6

step "default run, $EPOCHS epochs, as a user starts it"
start=$(date +%s.%N)
$PY train.py trainer.accelerator="$ACCELERATOR" trainer.max_epochs="$EPOCHS" \
  paths.data_dir="$data" paths.log_dir="$logs" >"$out/train.log" 2>&1
whole=$(echo "$(date +%s.%N) - $start" | bc)
tail -n 12 "$out/train.log"

step "report"
$PY - "$out" "$logs" "$whole" "$tests_rc" "$tests_seconds" "$EPOCHS" "$ACCELERATOR" <<'PY'
import json, sys
from pathlib import Path
out, logs, whole, tests_rc, tests_seconds, epochs, accelerator = sys.argv[1:]
(run,) = Path(logs, "train", "runs").iterdir()
metrics = json.loads((run / "metrics.json").read_text())
bench = json.loads(Path(out, "benchmark.json").read_text())
report = {
    "machine": Path(out, "machine.txt").read_text().strip(),
    "gpu_tests": "passed" if tests_rc == "0" else f"failed (exit {tests_rc})",
    "gpu_tests_seconds": int(tests_seconds),
    "benchmark": {k: v for k, v in bench.items() if k != "runs"},
    "default_run": {
        "epochs": int(epochs),
        "whole_process_seconds": round(float(whole), 1),
        "fit_seconds": metrics["fit_seconds"],
        "train_samples_per_sec_last": metrics.get("train/samples_per_sec_last"),
        "test_loss": metrics["test/loss"],
        "test_nll": metrics.get("test/nll"),
    },
}
Path(out, "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
b, d = report["benchmark"], report["default_run"]
lines = [
    f"# GPU check: {report['machine']}",
    "",
    f"- gpu tests: {report['gpu_tests']} in {report['gpu_tests_seconds']} s",
    f"- train samples/s over {b['epochs']} epochs: reference {b['reference_train_samples_per_sec']:.0f},"
    f" vaelab {b['vaelab_train_samples_per_sec']:.0f} ({b['speedup']:.2f}x)",
    f"- test loss after {b['epochs']} epochs: reference {b['reference_test_loss']:.2f},"
    f" vaelab {b['vaelab_test_loss']:.2f}",
]
for side in ("plain", "pythae"):
    if f"vaelab_default_over_{side}" in b:
        lines.append(
            f"- fit samples/s over {b['epochs']} epochs, 55 000 / 5000 split: {side}"
            f" {b[f'{side}_fit_samples_per_sec']:.0f}, vaelab's default run"
            f" {b['vaelab_default_fit_samples_per_sec']:.0f}"
            f" ({b[f'vaelab_default_over_{side}']:.2f}x); test loss {b[f'{side}_test_loss']:.2f}"
            f" against {b['vaelab_default_test_loss']:.2f}"
        )
one = json.loads(Path(out, "steps_per_call_1.json").read_text())
report["steps_per_call_1"] = {k: v for k, v in one.items() if k != "runs"}
batch = 128  # data.batch_size of the default run: steps/s = samples/s / 128
lines.append(
    f"- optimizer steps/s of the default fit over {b['epochs']} epochs: model.steps_per_call=1"
    f" {one['vaelab_default_fit_samples_per_sec'] / batch:.0f}"
    f" ({one['vaelab_default_over_plain']:.2f}x the plain loop's"
    f" {one['plain_fit_samples_per_sec'] / batch:.0f}), the default"
    f" {b['vaelab_default_fit_samples_per_sec'] / batch:.0f}"
    + (f" ({b['vaelab_default_over_plain']:.2f}x)" if "vaelab_default_over_plain" in b else "")
)
Path(out, "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
for side, why in b.get("skipped", {}).items():
    lines.append(f"- {side}: skipped ({why})")
if "vaelab_nll_seconds_for_10000_images" in b:
    lines.append(
        f"- NLL k={b['nll_k']} on {b['nll_images']} test images, scaled to 10 000:"
        f" {b['vaelab_nll_seconds_for_10000_images']:.1f} s"
    )
lines += [
    f"- default run, {d['epochs']} epochs (python train.py trainer.accelerator={accelerator}):"
    f" {d['whole_process_seconds']} s start to exit, fit {d['fit_seconds']:.1f} s,"
    f" last epoch {d['train_samples_per_sec_last'] or 0:.0f} samples/s, test loss {d['test_loss']:.2f}",
    "",
    "Command: bash scripts/gpu_check.sh (it runs pytest -m gpu, scripts/benchmark.py --device cuda"
    " and python train.py trainer.accelerator=gpu)",
]
Path(out, "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
rm -rf "$logs"
exit "$tests_rc"
