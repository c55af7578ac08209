#!/usr/bin/env bash
# Run train_speed.py on a CUDA machine with python3 and torch but neither network nor the training stack:
# install download_wheels.sh's wheels into a private folder that shadows the image's own versions, check the
# imports, run the benchmark in a scratch folder, and leave its JSON and the training logs in RESULT_DIR.
#
#     bash benchmarks/gpu/run_offline.sh WHEEL_DIR RESULT_DIR [train_speed.py arguments]
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/offline_stack.sh
wheels=$1
results=$(realpath -m "$2")
shift 2
mkdir -p "$results"
describe_machine || exit 1

scratch=$(mktemp -d)
install_offline_stack "$wheels" "$scratch" || exit 1

"$python" benchmarks/gpu/train_speed.py --workdir "$scratch/work" --out "$results/train_speed.json" "$@" \
  2>&1 | tee "$results/train_speed.log"
status=${PIPESTATUS[0]}
cp "$scratch"/work/*.log "$results"/ 2>/dev/null
rm -rf "$scratch"
exit "$status"
