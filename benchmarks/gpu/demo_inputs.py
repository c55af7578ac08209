"""What the GPU checks (train_speed.py, acceptance.py) train and score on: the recipe's settings as the config
schema defaults them, the demo's CPU settings for ``--smoke``, and a few rendered demo screenshots with the
baseline variant's prompts. The schema is read by hand: a GPU machine may lack Snakemake's validator."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
LABELS = REPO / "config" / "labels.yaml"
DEEPSPEED_CONFIGS = REPO / "config" / "deepspeed"

# A run of a fixed number of steps changes only what that needs: no evaluation, no checkpoints.
FIXED_STEPS_RUN = {"save_strategy": "no", "eval_strategy": "no", "load_best_model_at_end": False, "val_size": 0.0}
# The demo's CPU settings (config/config.yaml), for --smoke: float32, no flash-attn, small cutoff.
CPU_TRAINING = {
    "use_cpu": True,
    "bf16": False,
    "flash_attn": "auto",
    "cutoff_len": 1024,
    "learning_rate": 1.0e-3,
    "preprocessing_num_workers": 1,
    "dataloader_num_workers": 1,
}


def schema_defaults(node: dict | None = None) -> dict:
    """Every default of the config schema, nested as the config is (what validation fills in)."""
    node = node or yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    defaults = {}
    for key, spec in node.get("properties", {}).items():
        if "properties" in spec:  # an object: its own default ({}) filled with its keys' defaults
            defaults[key] = {**spec.get("default", {}), **schema_defaults(spec)}
        elif "default" in spec:
            defaults[key] = spec["default"]
    return defaults


def schema_hyperparameters() -> dict:
    """The recipe's training settings: train.hyperparameters' defaults in the config schema."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    return schema_defaults(schema["properties"]["train"]["properties"]["hyperparameters"])


def baseline_variant():
    """The baseline variant: every switch at the schema's default, as the workflow would validate it."""
    from vlmflow.prompting.variants import PromptVariant

    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    switches = schema["properties"]["variants"]["items"]["properties"]
    defaults = {key: spec["default"] for key, spec in switches.items() if "default" in spec}
    return PromptVariant.from_config({"name": "baseline", **defaults})


def demo_prompts(workdir: Path, labels, images: int):
    """A handful of rendered demo screenshots with the baseline variant's prompts and targets."""
    import pandas as pd

    from vlmflow.demo.dataset import generate_demo_dataset
    from vlmflow.prompting.prompts import build_prompt_table

    demo_dir = workdir / "demo"
    generate_demo_dataset(demo_dir, labels, n_train=images, n_test=0, flip_fraction=0.0, seed=0)
    documents = json.loads((demo_dir / "train.json").read_text(encoding="utf-8"))
    records = pd.DataFrame(
        {
            "id": [document["id"] for document in documents],
            "split": "train",
            "image_path": [str(demo_dir / document["image"][0]) for document in documents],
            "image_sha256": "",
            "label": [document["output"] for document in documents],
        }
    )
    return build_prompt_table(records, {}, baseline_variant(), labels)
