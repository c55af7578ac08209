# Helpers and input functions shared by every stage. Logic lives in src/vlmflow; this file only wires.
from pathlib import Path

from vlmflow.labels import label_names, load_labels

SPLITS = ["train", "test"]
DEMO_MODEL_DIR = "resources/demo/tiny-qwen2-vl"

LABELS = load_labels(config["labels"])


wildcard_constraints:
    split="|".join(SPLITS),


def data_file(wildcards):
    """The configured input file of a split (the demo's generated files by default)."""
    return config["data"][wildcards.split]


def base_model():
    """The base model as a file input when the workflow builds it (the demo); a hub id is no input."""
    path = config["model"]["name_or_path"]
    return [path] if path == DEMO_MODEL_DIR else []


def all_targets():
    return [
        *expand("results/data/{split}.parquet", split=SPLITS),
        *base_model(),
    ]
