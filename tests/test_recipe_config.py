"""The shipped config/config.yaml is a real run of the recipe (docs/mire.md), and the demo is an overlay
(config/demo.yaml): the recipe's values reach a real run, the demo's never do, and a fresh clone without data says
what to set."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from snakemake.utils import validate

from vlmflow.model.train import llamafactory_config
from vlmflow.recipe.final_models import training_seeds
from vlmflow.runtime.plan import load_config

from conftest import BIN, REPO, without_slurm_controller

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
QWEN2_VL_7B = REPO / "tests" / "data" / "qwen2_vl_7b_config.json"


def leaves(mapping: dict, prefix: tuple = ()) -> dict[tuple, object]:
    """Every value of a nested mapping by its key path (lists are values, as Snakemake's merge replaces them)."""
    found = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            found |= leaves(value, (*prefix, key))
        else:
            found[(*prefix, key)] = value
    return found


def at(config: dict, path: tuple):
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return KeyError
        config = config[key]
    return config


def schema_defaults() -> dict:
    config: dict = {}
    validate(config, str(SCHEMA))  # fills in every default
    return config


def read(path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture
def real_run(tmp_path) -> dict:
    """The effective configuration of a user's run: the shipped file with their data and a local 7B model."""
    model = tmp_path / "Qwen2-VL-7B-Instruct"
    model.mkdir()
    shutil.copy(QWEN2_VL_7B, model / "config.json")
    mine = {"data": {"train": str(tmp_path / "train.json"), "test": str(tmp_path / "test.json")}}
    mine["model"] = {"name_or_path": str(model)}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine), encoding="utf-8")
    return load_config([tmp_path / "mine.yaml"])


def test_a_real_run_trains_with_the_recipes_settings(real_run, tmp_path):
    train = real_run["train"]
    assert (train["finetuning_type"], train["deepspeed"], train["gpus_per_run"], train["folds"]) == (
        "full",
        "z3_offload",
        4,
        5,
    )
    assert train["threads"] > 1  # DeepSpeed's CPU Adam steps on these threads under offload
    assert real_run["pseudo"]["tau"] == 0.9 and real_run["correction"]["min_confidence"] == 0.0
    assert training_seeds(real_run["final"]["seeds"], train["seed"]) == [42]  # one fit per final model
    assert real_run["final"]["general_data"]["path"] is None and real_run["data"]["truth"] is None
    assert real_run["final"]["steps"] == ["correction", "pseudo"] and real_run["final"]["strategy"] == "retrain"
    # What LLaMA-Factory is given: the recipe's YAML (docs/mire.md), on the GPUs, under ZeRO-3 with offload.
    deepspeed = REPO / "config" / "deepspeed" / f"{train['deepspeed']}.json"
    settings = llamafactory_config(
        model=real_run["model"]["name_or_path"],
        dataset_dir=tmp_path,
        dataset="train",
        output_dir=tmp_path / "out",
        fine_tuning={"template": "qwen2_vl", "finetuning_type": train["finetuning_type"]},
        hyperparameters=train["hyperparameters"],
        deepspeed_config=deepspeed,
        report_to_mlflow=True,
        seed=train["seed"],
    )
    recipe = {
        "learning_rate": 1.0e-5,
        "num_train_epochs": 1.0,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "cutoff_len": 3000,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "bf16": True,
        "val_size": 0.1,
        "eval_steps": 100,
        "save_steps": 300,
        "save_total_limit": 1,
        "flash_attn": "fa2",
        "finetuning_type": "full",
    }
    assert {key: settings[key] for key in recipe} == recipe
    assert "use_cpu" not in settings and settings["deepspeed"] == str(deepspeed)
    offload = json.loads(deepspeed.read_text(encoding="utf-8"))["zero_optimization"]
    assert (
        offload["stage"] == 3 and offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"
    )


def test_none_of_the_demos_values_reach_a_real_run(real_run):
    defaults = leaves(schema_defaults())
    demo = leaves(read(REPO / "config" / "demo.yaml"))
    own = {path: value for path, value in demo.items() if defaults.get(path, KeyError) != value}
    assert own, "the demo's overlay sets nothing of its own"
    reached = {path: value for path, value in own.items() if at(real_run, path) == value}
    assert not reached, f"the demo's values reach a real run: {reached}"
    # The demo's data and model above all (the schema's data default is no data at all).
    assert not str(real_run["data"]["train"]).startswith("resources/demo")


def test_the_demo_overlay_sets_every_value_a_real_runs_file_changes():
    """A demo run from the checkout (config/config.yaml, then config/demo.yaml) and a test's run in a scratch folder
    (config/demo.yaml alone over the schema) get the same configuration."""
    defaults = leaves(schema_defaults())
    shipped = leaves(read(REPO / "config" / "config.yaml"))
    demo = leaves(read(REPO / "config" / "demo.yaml"))
    changed = {path for path, value in shipped.items() if defaults.get(path, KeyError) != value}
    assert changed >= {("data", "train"), ("data", "test")}  # the model is the schema's, the recipe's
    assert not changed - set(demo), f"config/config.yaml values the demo does not set: {changed - set(demo)}"
    alone = read(REPO / "config" / "demo.yaml")
    validate(alone, str(SCHEMA))
    assert load_config([REPO / "config" / "demo.yaml"]) == alone


def test_a_fresh_clone_without_data_says_which_key_to_set_and_how_to_run_the_demo(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n"],
        capture_output=True,
        text=True,
        env=without_slurm_controller(),
    )
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"data.train names data/train.json, which does not exist in {tmp_path}" in said
    assert "Set data.train and data.test in config/config.yaml" in said and "make demo" in said
    assert "Traceback" not in said and "MissingInputException" not in said
