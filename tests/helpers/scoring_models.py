"""The scoring tests' tiny model: small enough that every family's forward costs milliseconds on a CPU, with
a tokenizer trained on the baseline prompt and the label names it scores."""

from __future__ import annotations

from pathlib import Path

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.demo.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[2]


def build_scoring_model(folder: Path, family: str) -> Path:
    labels = load_labels(REPO / "config" / "labels.yaml")
    return build_tiny_model(
        folder,
        [baseline_prompt(labels), *label_names(labels)],
        family=family,
        seed=0,
        text_hidden_size=64,
        text_layers=2,
        vision_depth=1,
        max_visual_tokens=16,
        min_visual_tokens=4,
    )
