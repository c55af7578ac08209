#!/usr/bin/env bash
# One prepared call for a GPU machine (issue 29): a fold fine-tune of a tiny model of each family (Qwen2-VL,
# Qwen2.5-VL, Qwen3-VL) through `llamafactory-cli train` in bf16 under ZeRO-2 and ZeRO-3, flash-attn where it
# imports, scoring on the card with the transformers backend and with vLLM where it is at hand (the two compared),
# and the machine check; one row a check in $OUT/acceptance.md (and .json, machine.json, logs/). Exits 1 when a
# check fails. What each check does: benchmarks/gpu/acceptance.py.
#
# A borrowed GPU machine with python3 and a CUDA torch but no registry (the device tool's `run`; the wheels are
# 40 MiB). Here, where the venv and PyPI are, for the GPU image's Python version (`python3 --version` there):
#     bash benchmarks/gpu/download_wheels.sh benchmarks/results/wheels 3.12     # an ignored folder
# then one call of the device tool:
#     run(command="bash benchmarks/gpu/acceptance.sh --wheels benchmarks/results/wheels",
#         carry=["benchmarks/results/wheels"], timeout_s=540)
# The tool sets $OUT and brings back what is under it. Where the stack is installed (make install, make install-gpu):
#     bash benchmarks/gpu/acceptance.sh --out results/acceptance
# The CPU rehearsal that tests/test_gpu_acceptance.py runs (81 s on 2 idle cores; families side by side):
#     bash benchmarks/gpu/acceptance.sh --smoke --out /tmp/acceptance
#
#     bash benchmarks/gpu/acceptance.sh [--smoke] [--wheels DIR] [--out DIR] [acceptance.py arguments]
set -uo pipefail
cd "$(dirname "$0")/../.."
smoke=() wheels="" out=${OUT:-benchmarks/results/acceptance} rest=()
while (($#)); do
  case $1 in
    --smoke) smoke=(--smoke); shift ;;
    --wheels) wheels=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
out=$(realpath -m "$out")
mkdir -p "$out"

if [[ -n $wheels ]]; then
  source benchmarks/gpu/offline_stack.sh
  describe_machine || exit 1
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  install_offline_stack "$wheels" "$scratch" || exit 1
else
  # The project's venv where there is one (its bin holds llamafactory-cli and torchrun), else this machine's.
  python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo "$PWD/.venv/bin/python" || echo python3)}
  export PATH="$(dirname "$python"):$PATH" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
fi
"$python" benchmarks/gpu/acceptance.py "${smoke[@]}" --out "$out" "${rest[@]}" 2>&1 | tee "$out/acceptance.log"
exit "${PIPESTATUS[0]}"
