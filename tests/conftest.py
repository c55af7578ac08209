"""Shared test helpers: run the workflow's own Snakemake on a small config in a scratch folder."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running pytest holds snakemake and the CLIs


# The demo's CPU training settings, cut to a handful of steps.
SMALL_TRAINING = {
    "use_cpu": True,
    "bf16": False,
    "flash_attn": "auto",
    "cutoff_len": 1024,
    "learning_rate": 1.0e-3,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "eval_steps": 2,
    "logging_steps": 1,
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "freeze_vision_tower": False,
    "freeze_multi_modal_projector": False,
    "preprocessing_num_workers": 1,
    "dataloader_num_workers": 0,
    "disable_gradient_checkpointing": True,
}


def small_demo_config(workdir: Path, **overrides) -> dict:
    """A demo config small enough for a test: a few dozen images, 2 folds, the tiny model on the CPU."""
    config = {
        "labels": str(REPO / "config" / "labels.yaml"),
        "demo": {"n_train": 40, "n_test": 12, "seed": 3, "image_width": 180, "image_height": 320},
        "variants": [{"name": "baseline"}, {"name": "baseline_ocr", "ocr": True}],
        "ocr": {"shards": 2},
        "train": {
            "folds": 2,
            "deepspeed": "none",
            "gpus_per_run": 0,
            "threads": 2,
            "hyperparameters": dict(SMALL_TRAINING),
        },
        # Every final-model rule on the least training: one retrained combination, two pseudo rounds.
        "pseudo": {"tau": 0.0, "min_agreeing_folds": 1, "per_class_cap": 2, "rounds": 2},
        "final": {
            "strategy": "retrain",
            "stages": ["correction", "pseudo"],
            "ablation": [],
            "class_floor": 3,
            "general_data": {"path": "resources/demo/general.json", "ratio": 0.2},
        },
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def run_snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `snakemake` on the repository's Snakefile with `config`, outputs under `workdir`."""
    command, env = snakemake_command(workdir, config, *args)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def snakemake_command(workdir: Path, config: dict, *args: str) -> tuple[list[str], dict]:
    """The command line and environment of `run_snakemake` (for tests that start it in the background)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    command = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
        *args,
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    return command, env


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    config: dict


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """The reduced demo, run through every rule once per session and shared by the tests that read it
    (the end-to-end assertions, the report and the MLflow UI): the run is the slowest thing CI does.

    A test leaves it as it found it: it changes a deep copy of the config and undoes what it writes.
    """
    workdir = tmp_path_factory.mktemp("demo")
    config = small_demo_config(workdir)
    run_snakemake(workdir, config, "--cores", "2")
    return DemoRun(workdir, config)
