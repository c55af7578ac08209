"""Training through LLaMA-Factory's CLI: the best checkpoint is the model kept, with and without DeepSpeed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.demo.tiny_model import build_tiny_model
from vlmflow.model.train import (
    collect_trained_model,
    llamafactory_command,
    llamafactory_config,
    method_settings,
    run_llamafactory,
    write_training_inputs,
)

from conftest import REPO, SMALL_TRAINING

LABELS = load_labels(REPO / "config" / "labels.yaml")
NAMES = label_names(LABELS)
FULL = {"template": "qwen2_vl", "finetuning_type": "full"}


def write_weights(folder: Path, value: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((2,), value)}, folder / "model.safetensors")


def test_the_best_checkpoints_weights_replace_the_last_steps(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_weights(checkpoints, 9.0)  # the trainer's final save: the last step's weights
    write_weights(checkpoints / "checkpoint-2", 2.0)
    write_weights(checkpoints / "checkpoint-9", 9.0)
    state = {"best_model_checkpoint": "/elsewhere/checkpoints/checkpoint-2"}  # as the (resumed) trainer saw it
    (checkpoints / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    collect_trained_model(checkpoints, tmp_path / "model", keep_best=True)
    assert load_file(tmp_path / "model" / "model.safetensors")["w"].tolist() == [2.0, 2.0]
    assert (tmp_path / "model" / "trainer_state.json").is_file() and not checkpoints.exists()


def test_without_selection_the_final_weights_stay(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_weights(checkpoints, 9.0)
    (checkpoints / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": None}), encoding="utf-8")
    collect_trained_model(checkpoints, tmp_path / "model", keep_best=True)
    assert load_file(tmp_path / "model" / "model.safetensors")["w"].tolist() == [9.0, 9.0]


def test_a_best_checkpoint_without_weights_is_named(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_weights(checkpoints, 9.0)
    (checkpoints / "checkpoint-2").mkdir()
    (checkpoints / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": "checkpoint-2"}))
    with pytest.raises(FileNotFoundError, match="checkpoint-2: the best checkpoint has no saved weights"):
        collect_trained_model(checkpoints, tmp_path / "model", keep_best=True)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("best-checkpoint")
    prompt = baseline_prompt(LABELS)
    return build_tiny_model(folder / "model", [prompt, *NAMES], text_hidden_size=64, text_layers=2, vision_depth=1)


def training_prompts(folder: Path) -> pd.DataFrame:
    rows = []
    for index in range(8):
        path = folder / f"{index}.png"
        Image.new("RGB", (64, 112), (30 * index, 200 - 20 * index, 90)).save(path)
        label = NAMES[index % 3]
        rows.append({"id": str(index), "image_path": str(path), "prompt": baseline_prompt(LABELS), "target": label})
    return pd.DataFrame(rows).assign(system=None)


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", [None, "z3"], ids=["no-deepspeed", "zero3"])
def test_load_best_model_at_end_keeps_the_best_checkpoints_weights(small_model, tmp_path, deepspeed):
    """(b) of issue 14. "Best" is made the highest validation loss (greater_is_better), which on a falling
    loss is the first evaluation, so that the best checkpoint is surely not the last one."""
    hyperparameters = SMALL_TRAINING | {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 2,
        "val_size": 0.25,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "save_strategy": "steps",
        "save_steps": 2,
        "save_total_limit": 2,  # best and last (with 1 the trainer deletes all but the best at the end)
        "load_best_model_at_end": True,
        "metric_for_best_model": "loss",
        "greater_is_better": True,
    }
    deepspeed_config = REPO / "config" / "deepspeed" / f"{deepspeed}.json" if deepspeed else None
    workdir = tmp_path / "train"
    settings = llamafactory_config(
        model=str(small_model),
        dataset_dir=workdir / "dataset",
        dataset="best",
        output_dir=workdir / "checkpoints",
        fine_tuning=FULL,
        hyperparameters=hyperparameters,
        deepspeed_config=deepspeed_config,
        report_to_mlflow=False,
        seed=0,
    )
    config_path = write_training_inputs(training_prompts(tmp_path), workdir, settings)
    command, env = llamafactory_command(config_path, deepspeed=deepspeed is not None, processes=1)
    run_llamafactory(command, env | {"OMP_NUM_THREADS": "2"}, tmp_path / "train.log")

    checkpoints = workdir / "checkpoints"
    state = json.loads((checkpoints / "trainer_state.json").read_text(encoding="utf-8"))
    best = checkpoints / Path(state["best_model_checkpoint"]).name
    steps = sorted(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*"))
    assert best.name == "checkpoint-2" and steps[-1] > 2  # the last checkpoint is kept beside the best
    best_weights = load_file(best / "model.safetensors")
    last_weights = load_file(checkpoints / f"checkpoint-{steps[-1]}" / "model.safetensors")
    assert any(not torch.equal(best_weights[name], last_weights[name]) for name in best_weights)
    reference = tmp_path / "as_trained"
    shutil.copytree(checkpoints, reference)

    collect_trained_model(checkpoints, workdir / "model", keep_best=True)
    kept = load_file(workdir / "model" / "model.safetensors")
    assert kept.keys() == best_weights.keys()
    assert all(torch.equal(kept[name], best_weights[name]) for name in kept)
    # What the trainer saved itself: under ZeRO-3 its DeepSpeed reload restores the best checkpoint; without
    # DeepSpeed transformers' reload matches no key (names renamed on save) and it keeps the last step's.
    trainer_saved = load_file(reference / "model.safetensors")
    trainer_kept_best = all(torch.equal(trainer_saved[name], best_weights[name]) for name in trainer_saved)
    assert trainer_kept_best == (deepspeed is not None)


def test_method_settings_are_llamafactory_arguments():
    assert method_settings("full", {}) == {"finetuning_type": "full"}
    assert method_settings("freeze", {"trainable_layers": 25, "trainable_modules": "all"}) == {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": 25,
        "freeze_trainable_modules": "all",
    }
    lora = method_settings("lora", {"rank": 8, "alpha": 16, "dropout": 0.0, "target": "all"})
    assert lora == {
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
    }
    with pytest.raises(ValueError, match="'qlora'"):
        method_settings("qlora", {})


@pytest.mark.parametrize(("workers", "persistent"), [(2, True), (0, None)])
def test_persistent_workers_are_asked_for_only_where_there_are_workers(workers, persistent):
    """The schema's default keeps loader workers between epochs; with none (the CPU demo's 0) the DataLoader
    would refuse the setting, so the YAML leaves it out."""
    settings = llamafactory_config(
        model="model",
        dataset_dir="dataset",
        dataset="fold0_train",
        output_dir="checkpoints",
        fine_tuning=FULL,
        hyperparameters={"dataloader_num_workers": workers, "dataloader_persistent_workers": True},
        deepspeed_config=None,
        report_to_mlflow=False,
        seed=0,
    )
    assert settings.get("dataloader_persistent_workers") is persistent
