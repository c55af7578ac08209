"""The scoring tests' tiny model: small enough that every family's forward costs milliseconds on a CPU, with
a tokenizer trained on the baseline prompt and the label names it scores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.demo.tiny_model import build_tiny_model
from vlmflow.model.families import family_of

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


def overfit_through_llamafactory(
    model_dir: Path, dataset_dir: Path, dataset: str, out_dir: Path, batch_size: int
) -> Path:
    """Fine-tune ``model_dir`` on ``dataset`` (written by ``write_llamafactory_dataset``) through `llamafactory-cli
    train` until it has learnt it by heart (40 epochs at a high constant rate); return the trained model's folder.
    Through the CLI rather than a hand-written loop, the model learns the workflow's real token layout."""
    settings = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "template": family_of(model_dir).template,
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "cutoff_len": 512,
        "output_dir": str(out_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": batch_size,
        "num_train_epochs": 40,
        "learning_rate": 1.0e-2,
        "lr_scheduler_type": "constant",
        "logging_steps": 10,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
        "seed": 0,
    }
    config_path = out_dir.parent / f"{out_dir.name}.yaml"
    config_path.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = Path(sys.executable).parent / "llamafactory-cli"
    result = subprocess.run([str(cli), "train", str(config_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir
