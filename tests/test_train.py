"""Training through LLaMA-Factory's CLI: the best checkpoint is the model kept, with and without DeepSpeed, without
the trainer reloading it; a checkpoint resumes only the same training on as many processes; the trainer's processes
end with the job that runs them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.demo.tiny_model import build_tiny_model
from vlmflow.model.train import (
    STAMP,
    collect_trained_model,
    living_processes,
    llamafactory_command,
    llamafactory_config,
    method_settings,
    resume_settings,
    run_llamafactory,
    training_fingerprint,
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
    loss is the first evaluation, so that the best checkpoint is surely not the last one. The trainer is asked
    for no reload at the end (issue 28: under DeepSpeed it reloads the optimizer state too), and the
    checkpoints left are the best and the latest only."""
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
    assert settings["load_best_model_at_end"] is False and settings["metric_for_best_model"] == "loss"
    config_path = write_training_inputs(training_prompts(tmp_path), workdir, settings)
    command, env = llamafactory_command(config_path, deepspeed=deepspeed is not None, processes=1)
    run_llamafactory(command, env | {"OMP_NUM_THREADS": "2"}, tmp_path / "train.log")
    assert "Loading best model from" not in (tmp_path / "train.log").read_text(encoding="utf-8")

    checkpoints = workdir / "checkpoints"
    state = json.loads((checkpoints / "trainer_state.json").read_text(encoding="utf-8"))
    best = checkpoints / Path(state["best_model_checkpoint"]).name
    steps = sorted(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*"))
    # Saved at steps 2, 4, 6, 8 and 9: on disk only the best and the latest remain.
    assert best.name == "checkpoint-2" and len(steps) == 2 and steps[-1] > 2
    best_weights = load_file(best / "model.safetensors")
    last_weights = load_file(checkpoints / f"checkpoint-{steps[-1]}" / "model.safetensors")
    assert any(not torch.equal(best_weights[name], last_weights[name]) for name in best_weights)
    reference = tmp_path / "as_trained"
    shutil.copytree(checkpoints, reference)

    collect_trained_model(checkpoints, workdir / "model", keep_best=True)
    kept = load_file(workdir / "model" / "model.safetensors")
    assert kept.keys() == best_weights.keys()
    assert all(torch.equal(kept[name], best_weights[name]) for name in kept)
    # What the trainer saved itself is the last step's: it reloaded nothing, with or without DeepSpeed.
    trainer_saved = load_file(reference / "model.safetensors")
    assert all(torch.equal(trainer_saved[name], last_weights[name]) for name in trainer_saved)


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


def test_selecting_the_best_checkpoint_needs_a_checkpoint_at_each_evaluation():
    """The trainer checks this only for its own reload, which the workflow never asks for."""
    hyperparameters = {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 100}
    with pytest.raises(ValueError, match="save_strategy 'steps' every 250 steps, eval_strategy 'steps' every 100"):
        llamafactory_config(
            model="model",
            dataset_dir="dataset",
            dataset="fold0_train",
            output_dir="checkpoints",
            fine_tuning=FULL,
            hyperparameters=hyperparameters | {"save_steps": 250},
            deepspeed_config=None,
            report_to_mlflow=False,
            seed=0,
        )


def interrupted_training(tmp_path: Path, processes: int) -> tuple[dict, Path]:
    """The settings and dataset of a ZeRO-3 fine-tune whose interrupted run on ``processes`` left checkpoint-4."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "fold0_train.json").write_text("[]", encoding="utf-8")
    settings = {"output_dir": str(tmp_path / "checkpoints"), "finetuning_type": "full", "deepspeed": "z3.json"}
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    stamp = {"training": training_fingerprint(settings, dataset), "processes": processes}
    (tmp_path / "checkpoints" / STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    return settings, dataset


def test_a_checkpoint_of_the_same_training_on_as_many_processes_is_resumed(tmp_path):
    settings, dataset = interrupted_training(tmp_path, processes=2)
    resumed = resume_settings(settings, dataset, processes=2)
    assert resumed["resume_from_checkpoint"] == str(tmp_path / "checkpoints" / "checkpoint-4")


def test_a_checkpoint_written_by_another_number_of_processes_is_not_resumed(tmp_path, caplog):
    """ZeRO-3 shards a checkpoint per rank: one written by 2 ranks cannot be loaded by 1."""
    settings, dataset = interrupted_training(tmp_path, processes=2)
    with caplog.at_level(logging.INFO, logger="vlmflow.model.train"):
        fresh = resume_settings(settings, dataset, processes=1)
    assert "resume_from_checkpoint" not in fresh
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    assert f"not resuming {checkpoint}: it was written by 2 processes, this run has 1" in caplog.text
    assert not checkpoint.exists()
    assert json.loads((tmp_path / "checkpoints" / STAMP).read_text(encoding="utf-8"))["processes"] == 1


# A trainer's process tree as DeepSpeed has it: llamafactory-cli (depth 3) starts torchrun (2), which starts a rank
# (1) in a session of its own, which starts a data loader worker (0). Each appends its process id to a file.
FAKE_TRAINER = """
import os, subprocess, sys, time
depth, pids = int(sys.argv[1]), sys.argv[2]
if depth:
    subprocess.Popen([sys.executable, __file__, str(depth - 1), pids], start_new_session=depth == 2)
with open(pids, "a") as listed:
    listed.write(f"{os.getpid()}\\n")
time.sleep(600)
"""
JOB = "import sys; from vlmflow.model.train import run_llamafactory; run_llamafactory(sys.argv[1:-1], {}, sys.argv[-1])"


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_job_leaves_no_process_of_its_trainer_behind(tmp_path, kill):
    """SIGKILL: the job cannot act, its watchdog ends the trainer. SIGTERM: the job ends it and fails."""
    script, pids = tmp_path / "trainer.py", tmp_path / "pids.txt"
    script.write_text(FAKE_TRAINER, encoding="utf-8")
    command = [sys.executable, "-c", JOB, sys.executable, str(script), "3", str(pids), str(tmp_path / "train.log")]
    job = subprocess.Popen(command, start_new_session=True)
    try:
        assert wait_until(lambda: pids.is_file() and len(pids.read_text().split()) == 4, 30), "the tree started"
        tree = {int(pid) for pid in pids.read_text().split()}
        os.kill(job.pid, kill)
        assert job.wait(timeout=30) == (-signal.SIGKILL if kill == signal.SIGKILL else 128 + signal.SIGTERM)
        assert wait_until(lambda: not tree & living_processes().keys(), 15), tree & living_processes().keys()
    finally:  # nothing is left running should the test fail
        for pid in [job.pid, *map(int, pids.read_text().split() if pids.is_file() else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_trainer_that_fails_leaves_no_process_behind(tmp_path):
    """The job's end ends what the trainer left in its process group."""
    pid_file = tmp_path / "pid.txt"
    leaves_a_child = (
        "import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f" open({str(pid_file)!r}, 'w').write(str(child.pid)); sys.exit(3)"
    )
    with pytest.raises(RuntimeError, match="llamafactory-cli train exited with 3"):
        run_llamafactory([sys.executable, "-c", leaves_a_child], {}, tmp_path / "train.log")
    left = int(pid_file.read_text())
    assert wait_until(lambda: left not in living_processes(), 5)
