"""What a fine-tune changed: the saved tensors that differ from its base model's."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

# Saved names differ per family (Qwen2-VL: model.layers.*, visual.*; Qwen3-VL: model.language_model.*).
TEXT_LAYER = re.compile(r"^model\.(language_model\.)?layers\.(\d+)\.")


def changed_tensors(base_model: Path, trained_model: Path) -> set[str]:
    """Names of the tensors of ``trained_model/model.safetensors`` that differ from ``base_model``'s."""
    base = load_file(base_model / "model.safetensors")
    trained = load_file(trained_model / "model.safetensors")
    return {name for name in base if not torch.equal(base[name], trained[name])}


def text_layers(names: set[str]) -> set[int]:
    """The decoder layer numbers among tensor ``names``."""
    return {int(match[2]) for name in names if (match := TEXT_LAYER.match(name))}
