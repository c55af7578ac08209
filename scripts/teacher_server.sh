#!/usr/bin/env bash
# A teacher for the workflow on this machine: LLaMA-Factory's OpenAI-compatible API server
# (`llamafactory-cli api`) serving a Qwen2-VL model. The demo serves its own tiny model, built first
# with `.venv/bin/snakemake --cores all resources/demo/tiny-qwen2-vl`; config/teacher_demo.yaml
# points the workflow at it. Stop it with Ctrl-C, or kill its process id.
#
#   scripts/teacher_server.sh [MODEL] [TEMPLATE]
#
# MODEL (default resources/demo/tiny-qwen2-vl) is a local folder or hub id; TEMPLATE (default qwen2_vl)
# LLaMA-Factory's chat template for it.
#   VLMFLOW_TEACHER_HOST   interface to bind; default 127.0.0.1, this machine only
#   VLMFLOW_TEACHER_PORT   default 8008
#   API_KEY                when set, the server refuses requests without it (teacher.api_key_env names
#                          the variable holding it on the workflow's side)
set -euo pipefail
model=${1:-resources/demo/tiny-qwen2-vl}
template=${2:-qwen2_vl}
if [[ ! -e $model && $model == resources/* ]]; then
  echo "$model does not exist yet: build it with .venv/bin/snakemake --cores all $model" >&2
  exit 1
fi
[[ -e $model ]] && model=$(realpath "$model")
# The caller's llamafactory-cli first, else the repository's venv.
PATH="$PATH:$(dirname "$(realpath "$0")")/../.venv/bin"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export API_HOST=${VLMFLOW_TEACHER_HOST:-127.0.0.1} API_PORT=${VLMFLOW_TEACHER_PORT:-8008}
exec llamafactory-cli api --model_name_or_path "$model" --template "$template" --infer_backend huggingface
