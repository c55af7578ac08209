"""One fold's full fine-tune through LLaMA-Factory's own CLI, on a YAML this module writes.

Model selection (``val_size``, ``eval_steps``, ``load_best_model_at_end``) happens inside LLaMA-Factory
on a split of the dataset it is given, and it is given only the fold's training part, so the
held-out fold never influences which checkpoint is kept and the out-of-fold predictions stay honest.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from vlmflow.folds import fold_training_part
from vlmflow.prompts import write_llamafactory_dataset

log = logging.getLogger(__name__)

# The trainer's words when a checkpoint's keys do not match the model: nothing was loaded.
BEST_MODEL_NOT_LOADED = "There were unexpected keys in the checkpoint model loaded"


def llamafactory_config(
    *,
    model: str,
    dataset_dir: str | Path,
    dataset: str,
    output_dir: str | Path,
    hyperparameters: dict,
    deepspeed_config: str | Path | None,
    report_to_mlflow: bool,
    seed: int,
) -> dict:
    """The training YAML: fixed keys for this workflow's data and layout, then the configured hyper-parameters."""
    settings = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "template": "qwen2_vl",
        "dataset_dir": str(dataset_dir),
        "dataset": dataset,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "plot_loss": True,
        "seed": seed,
        "report_to": "mlflow" if report_to_mlflow else "none",
        **hyperparameters,
    }
    if deepspeed_config is not None:
        settings["deepspeed"] = str(deepspeed_config)
        settings.pop("use_cpu", None)  # DeepSpeed picks its accelerator itself; use_cpu fights it
    return settings


def write_training_inputs(
    prompts: pd.DataFrame, workdir: str | Path, settings: dict, extra_records: list[dict] = ()
) -> Path:
    """Write the labelled prompts (plus text-only ``extra_records``) as a sharegpt dataset and the YAML
    under ``workdir``; return the YAML's path."""
    workdir = Path(workdir)
    write_llamafactory_dataset(prompts, workdir / "dataset", settings["dataset"], extra_records)
    config_path = workdir / "llamafactory.yaml"
    config_path.write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False), encoding="utf-8")
    log.info(
        "%s: %d training records + %d extra, YAML %s",
        settings["dataset"],
        len(prompts),
        len(extra_records),
        config_path,
    )
    return config_path


def llamafactory_command(config_path: str | Path, *, deepspeed: bool, processes: int) -> tuple[list[str], dict]:
    """The argument list and extra environment that run ``llamafactory-cli train <yaml>``.

    With DeepSpeed, LLaMA-Factory launches itself through torchrun when FORCE_TORCHRUN is set; on a
    machine without GPUs it computes 0 processes unless NPROC_PER_NODE says how many.
    """
    cli = shutil.which("llamafactory-cli") or str(Path(sys.executable).parent / "llamafactory-cli")
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes)} if deepspeed else {}
    return [cli, "train", str(config_path)], env


def run_llamafactory(command: list[str], extra_env: dict, log_path: str | Path) -> None:
    """Run the trainer with its output appended to the rule's log; fail with the log's tail."""
    env = {**os.environ, **extra_env}
    # torchrun is looked up on PATH: make the running interpreter's bin folder come first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(log_path, "a", encoding="utf-8") as log_file:
        completed = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    output = Path(log_path).read_text(encoding="utf-8", errors="replace")
    if BEST_MODEL_NOT_LOADED in output:
        log.warning(
            "load_best_model_at_end did not load the best checkpoint (its keys did not match the model's); "
            "the saved weights are the last step's. Seen with transformers 5.6 and Qwen2-VL without DeepSpeed."
        )
    if completed.returncode != 0:
        tail = output.splitlines()[-30:]
        raise RuntimeError(
            f"llamafactory-cli train exited with {completed.returncode}; last lines of {log_path}:\n" + "\n".join(tail)
        )


def train_model(
    *,
    prompts: pd.DataFrame,
    dataset: str,
    workdir: str | Path,
    model: str,
    hyperparameters: dict,
    deepspeed_config: str | Path | None,
    processes: int,
    seed: int,
    log_path: str | Path,
    threads: int = 1,
    extra_env: dict | None = None,
    extra_records: list[dict] = (),
) -> Path:
    """Fine-tune on the labelled ``prompts``: write the dataset and YAML under ``workdir``, train into
    ``workdir/model``; return the YAML's path.

    ``extra_env`` carries MLflow's variables (``tracking.training_environment``) when a run is open;
    ``extra_records`` are text-only chat records mixed into the dataset (general data).
    """
    workdir = Path(workdir)
    settings = llamafactory_config(
        model=model,
        dataset_dir=workdir / "dataset",
        dataset=dataset,
        output_dir=workdir / "model",
        hyperparameters=hyperparameters,
        deepspeed_config=deepspeed_config,
        report_to_mlflow="MLFLOW_RUN_ID" in (extra_env or {}),
        seed=seed,
    )
    if prompts["target"].isna().all():
        raise ValueError(f"{dataset}: no labelled records to train on")
    config_path = write_training_inputs(prompts, workdir, settings, extra_records)
    command, env = llamafactory_command(config_path, deepspeed=deepspeed_config is not None, processes=processes)
    # The trainer's CPU thread pool follows the job's threads: more threads than cores was up to
    # 10x slower on a shared 2-core machine.
    env["OMP_NUM_THREADS"] = str(threads)
    run_llamafactory(command, {**env, **(extra_env or {})}, log_path)
    return config_path


def train_fold(*, prompts: pd.DataFrame, folds: pd.DataFrame, fold: int, **training) -> Path:
    """Fine-tune one fold on its training part (the held-out fold never seen); see ``train_model``."""
    part = fold_training_part(prompts, folds, fold)
    if part.empty:
        raise ValueError(f"fold {fold} has no training records")
    return train_model(prompts=part, dataset=f"fold{fold}_train", **training)
