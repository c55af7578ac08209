# Helpers and input functions shared by every stage. Logic lives in src/vlmflow; this file only wires.
import sys
from pathlib import Path

# common.smk imports the library straight from src/; jobs import the installed one (`make install`).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from vlmflow.labels import load_labels

SPLITS = ["train", "test"]
DEMO_MODEL_DIR = "resources/demo/tiny-qwen2-vl"
DEEPSPEED_DIR = Path(workflow.basedir) / "config" / "deepspeed"
VARIANTS = {variant["name"]: variant for variant in config["variants"]}
FOLDS = list(range(config["train"]["folds"]))

LABELS = load_labels(config["labels"])


wildcard_constraints:
    split="|".join(SPLITS),
    variant="|".join(VARIANTS),
    fold=r"\d+",
    shard=r"\d+",


def data_file(wildcards):
    """The configured input file of a split (the demo's generated files by default)."""
    return config["data"][wildcards.split]


def base_model():
    """The base model as a file input when the workflow builds it (the demo); a hub id is no input."""
    path = config["model"]["name_or_path"]
    return [path] if path == DEMO_MODEL_DIR else []


def base_model_name(wildcards, input):
    """What LLaMA-Factory loads: the built demo model's folder, or the configured hub id or path."""
    return input.base_model or config["model"]["name_or_path"]


def variant_settings(wildcards):
    return VARIANTS[wildcards.variant]


def ocr_table_if_needed(wildcards):
    """Only variants that put OCR text in the prompt or the reason wait for OCR."""
    settings = VARIANTS[wildcards.variant]
    return "results/ocr/ocr.parquet" if settings["ocr"] or settings["reason"] else []


def ocr_engine_options():
    """Options passed to the engine: ocr.options, plus PaddleOCR's local model folders."""
    paddle = config["ocr"]["paddle"] if config["ocr"]["engine"] == "paddleocr" else {}
    return {**config["ocr"]["options"], **paddle}


def deepspeed_config():
    name = config["train"]["deepspeed"]
    return [] if name == "none" else str(DEEPSPEED_DIR / f"{name}.json")


def truth_file():
    """The truth file (evaluation only) when one is configured."""
    return config["data"]["truth"] or []


def override_path(wildcards):
    return str(Path(config["correction"]["overrides_dir"]) / f"{wildcards.variant}.csv")


def override_file(wildcards):
    """The variant's override file as an input once the user has written it: editing it reruns its dependents."""
    path = override_path(wildcards)
    return path if Path(path).exists() else []


def submission_probabilities(wildcards):
    """Test probabilities of the final model: the weight-averaged fold model, or the fold ensemble."""
    if config["final"]["strategy"] == "average_folds":
        return f"results/{wildcards.variant}/final/test_probs.parquet"
    return f"results/{wildcards.variant}/test_probs.parquet"


def all_targets():
    return [
        *expand("results/data/{split}.parquet", split=SPLITS),
        *base_model(),
        *expand("results/{variant}/prompts.parquet", variant=VARIANTS),
        "results/folds/folds.csv",
        "results/summary/variants.md",
        *expand(
            "results/{variant}/{name}",
            variant=VARIANTS,
            name=["label_corrections.csv", "pseudo_labels.csv", "submission.csv"],
        ),
    ]
