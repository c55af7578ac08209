#!/usr/bin/env bash
# Run train_speed.py on a CUDA machine with python3 and torch but neither network nor the training stack:
# install download_wheels.sh's wheels into a private folder that shadows the image's own versions, check the
# imports, run the benchmark in a scratch folder, and leave its JSON and the training logs in RESULT_DIR.
#
#     bash benchmarks/gpu/run_offline.sh WHEEL_DIR RESULT_DIR [train_speed.py arguments]
set -uo pipefail
cd "$(dirname "$0")/../.."
wheels=$(realpath "$1")
results=$(realpath -m "$2")
shift 2
python=${PYTHON:-python3}
mkdir -p "$results"
"$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.is_available()
and torch.cuda.get_device_name(0))' || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

scratch=$(mktemp -d)
"$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" \
  "$wheels"/*.whl || exit 1
export PYTHONPATH="$scratch/site:$PWD/src" PATH="$scratch/site/bin:$PATH" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export VLMFLOW_CJK_FONT=${VLMFLOW_CJK_FONT:-$(find "$wheels" -name '*.tt[cf]' | head -n 1)}
# Fail in seconds, not after the model build, when a package is missing or refuses its neighbours' versions.
"$python" -c '
import importlib
for name in ("transformers", "tokenizers", "datasets", "accelerate", "peft", "trl", "deepspeed", "llamafactory",
             "pandas", "vlmflow"):
    print(name, getattr(importlib.import_module(name), "__version__", "?"))
from llamafactory.extras.misc import check_dependencies
check_dependencies()
from llamafactory.train.tuner import run_exp
' || exit 1

"$python" benchmarks/gpu/train_speed.py --workdir "$scratch/work" --out "$results/train_speed.json" "$@" \
  2>&1 | tee "$results/train_speed.log"
status=${PIPESTATUS[0]}
cp "$scratch"/work/*.log "$results"/ 2>/dev/null
rm -rf "$scratch"
exit "$status"
