#!/usr/bin/env bash
# Gather what run_offline.sh installs on a CUDA machine that has python3 with torch, transformers' own
# dependencies and numpy, but no network: the training stack at requirements/lock.txt's versions, as wheels
# for that machine's Python, plus a CJK font for the demo's screenshots. Run here, where the venv and PyPI are.
#
#     bash benchmarks/gpu/download_wheels.sh [DIR] [PYTHON_VERSION]     # default .whl 3.12
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.whl}
python_version=${2:-3.12}
pip=.venv/bin/pip

# LLaMA-Factory with what it, DeepSpeed and the benchmark import on the training path, pinned as in the lock.
# transformers, tokenizers, accelerate and pandas are carried although such images hold them: LLaMA-Factory
# 0.9.5 accepts transformers <= 5.6.0, which accepts tokenizers <= 0.23.0, and the lock's set is the tested one.
packages=(llamafactory transformers tokenizers accelerate peft trl datasets dill multiprocess fsspec
  pandas pytz tzdata pydantic pydantic_core annotated-types typing-inspection typing_extensions hjson
  fire termcolor omegaconf)
pins=()
for package in "${packages[@]}"; do
  pins+=("$(grep -i "^${package}==" requirements/lock.txt)")
done
platforms=()
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64; do
  platforms+=(--platform "$tag")
done
mkdir -p "$dir"
"$pip" download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$python_version" \
  "${platforms[@]}" -d "$dir" "${pins[@]}"
# The GPU extras (Liger's kernels: pure Python over the machine's own triton).
"$pip" download --quiet --no-deps --only-binary=:all: -d "$dir" -r requirements/gpu.txt
# DeepSpeed ships only a source archive whose build imports torch; without its ops the wheel is pure Python
# and picks the CUDA accelerator at run time.
DS_BUILD_OPS=0 "$pip" wheel --quiet --no-deps --no-build-isolation -w "$dir" -r requirements/deepspeed.txt
.venv/bin/python -c 'from vlmflow.runtime.fonts import find_cjk_font; print(find_cjk_font())' | xargs -I{} cp {} "$dir"/
du -sh "$dir"
