#!/usr/bin/env bash
# The DDP training tests N times in one pytest run (pytest-repeat), with a CPU-bound process beside
# them, as on a busy CI machine; stops at the first failure and prints the time taken:
#   bash scripts/ddp_soak.sh [N]          (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
.venv/bin/python -c "while True: pass" &
HOG=$!
trap 'kill $HOG' EXIT
start=$(date +%s)
.venv/bin/python -m pytest -x -q -p no:cacheprovider --count "$N" \
  tests/test_ddp.py::test_ddp_on_two_cpu_processes_matches_one_process \
  tests/test_sweeps.py::test_optuna_search_with_ddp_trials
echo "ddp soak: $N rounds passed in $(( $(date +%s) - start )) s on $(lscpu | sed -n 's/^Model name: *//p')"
