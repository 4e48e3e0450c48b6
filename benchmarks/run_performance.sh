#!/usr/bin/env bash
# The performance benchmarks of the README's "Performance" section, one after the other on a quiet machine:
#   bash benchmarks/run_performance.sh            # CPU, one thread
#   bash benchmarks/run_performance.sh --device cuda --autocast bf16
# Each writes its JSON to benchmarks/out/ (measuring its own baseline in the same run) and prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=("$@")
run() { local start; start=$(date +%s); python "$@" "${extra[@]}"; echo "$1 finished in $(( $(date +%s) - start )) s"; }
run benchmarks/bench_predict_path.py --out benchmarks/out/predict_path.json
run benchmarks/bench_network_peers.py --out benchmarks/out/network_peers.json
run benchmarks/bench_training_peers.py --repeats 3 --epochs 3 --out benchmarks/out/training_peers.json
run benchmarks/bench_explain.py --repeats 3 --out benchmarks/out/explain_contributions.json
