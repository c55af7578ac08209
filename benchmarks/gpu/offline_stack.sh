# Sourced by run_offline.sh and acceptance.sh: the training stack from download_wheels.sh's wheels, on a CUDA machine
# with python3 and torch but neither network nor the stack.
#
#     source benchmarks/gpu/offline_stack.sh
#     install_offline_stack WHEEL_DIR SCRATCH    # then $PYTHON imports the stack from SCRATCH/site
python=${PYTHON:-python3}

# Print the interpreter, torch and the card; fail when this Python has no torch.
describe_machine() {
  "$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.is_available()
and torch.cuda.get_device_name(0))' || return 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  return 0
}

# Install the wheels into SCRATCH/site, a private folder that shadows the image's own versions, and check that the
# stack imports: fail in seconds, not after a model build, when a package is missing or refuses its neighbours.
install_offline_stack() {
  local wheels scratch
  wheels=$(realpath "$1")
  scratch=$2
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" \
    "$wheels"/*.whl || return 1
  export PYTHONPATH="$scratch/site:$PWD/src" PATH="$scratch/site/bin:$PATH" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  export OFFLINE_STACK_SITE="$scratch/site"  # for a child with a stack of its own (vLLM's) to leave out
  VLMFLOW_CJK_FONT=${VLMFLOW_CJK_FONT:-$(find "$wheels" -name '*.tt[cf]' | head -n 1)}
  export VLMFLOW_CJK_FONT
  "$python" -c '
import importlib
for name in ("transformers", "tokenizers", "datasets", "accelerate", "peft", "trl", "deepspeed", "llamafactory",
             "pandas", "vlmflow"):
    print(name, getattr(importlib.import_module(name), "__version__", "?"))
from llamafactory.extras.misc import check_dependencies
check_dependencies()
from llamafactory.train.tuner import run_exp
'
}
