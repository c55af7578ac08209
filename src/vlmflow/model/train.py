"""One fold's fine-tune (full, freeze or LoRA) through LLaMA-Factory's own CLI, on a YAML this module writes.

Model selection (``val_size``, ``eval_steps``, ``load_best_model_at_end``) happens inside LLaMA-Factory
on a split of the dataset it is given, and it is given only the fold's training part, so the
held-out fold never influences which checkpoint is kept and the out-of-fold predictions stay honest.

Checkpoints go to ``<workdir>/checkpoints``, which no rule declares: Snakemake deletes a failed job's
outputs, and a killed fine-tune must find its checkpoints on the rerun to resume from them. The
finished model is then moved into ``<workdir>/model`` (the rule's output) and the checkpoints removed.

With ``load_best_model_at_end`` the model kept is the best checkpoint's, taken from that checkpoint's
saved weights: transformers 5.x saves Qwen-VL weights under their original names and its trainer's reload
of the best checkpoint (a non-strict ``load_state_dict``) then matches none of them and silently keeps the
last step's weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from vlmflow.data.folds import fold_training_part
from vlmflow.prompting.prompts import write_llamafactory_dataset
from vlmflow.runtime.outputs import write_text_atomically

log = logging.getLogger(__name__)

# What a trainer's output folder holds as weights: a full (or freeze) model, or a LoRA adapter.
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# LLaMA-Factory's argument names of each fine-tuning method's settings (config train.freeze, train.lora).
METHOD_ARGUMENTS = {
    "full": {},
    "freeze": {"trainable_layers": "freeze_trainable_layers", "trainable_modules": "freeze_trainable_modules"},
    "lora": {"rank": "lora_rank", "alpha": "lora_alpha", "dropout": "lora_dropout", "target": "lora_target"},
}


def method_settings(finetuning_type: str, method: dict) -> dict:
    """LLaMA-Factory's keys for a fine-tuning method and its settings (``train.freeze``, ``train.lora``)."""
    if finetuning_type not in METHOD_ARGUMENTS:
        raise ValueError(f"finetuning_type {finetuning_type!r}: expected one of {', '.join(METHOD_ARGUMENTS)}")
    names = METHOD_ARGUMENTS[finetuning_type]
    return {"finetuning_type": finetuning_type, **{names[key]: value for key, value in method.items() if key in names}}


def llamafactory_config(
    *,
    model: str,
    dataset_dir: str | Path,
    dataset: str,
    output_dir: str | Path,
    fine_tuning: dict,
    hyperparameters: dict,
    deepspeed_config: str | Path | None,
    report_to_mlflow: bool,
    seed: int,
) -> dict:
    """The training YAML: fixed keys for this workflow's data and layout, the family's template and the
    fine-tuning method (``fine_tuning``: template, finetuning_type, method settings), then the configured
    hyper-parameters."""
    settings = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        **method_settings(fine_tuning["finetuning_type"], fine_tuning.get("method", {})),
        "template": fine_tuning["template"],
        "dataset_dir": str(dataset_dir),
        "dataset": dataset,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "plot_loss": True,
        "seed": seed,
        "report_to": "mlflow" if report_to_mlflow else "none",
        **hyperparameters,
    }
    if not settings.get("dataloader_num_workers"):
        # Persistent workers need workers: the DataLoader refuses them without (the CPU demo loads in-process).
        settings.pop("dataloader_persistent_workers", None)
    if deepspeed_config is not None:
        settings["deepspeed"] = str(deepspeed_config)
        settings.pop("use_cpu", None)  # DeepSpeed picks its accelerator itself; use_cpu fights it
    return settings


def write_training_inputs(
    prompts: pd.DataFrame, workdir: str | Path, settings: dict, extra_records: list[dict] = ()
) -> Path:
    """Write the labelled prompts (plus text-only ``extra_records``) as a sharegpt dataset and the YAML
    under ``workdir``, resuming from the checkpoints of an interrupted identical run; return the YAML's path."""
    workdir = Path(workdir)
    write_llamafactory_dataset(prompts, workdir / "dataset", settings["dataset"], extra_records)
    settings = resume_settings(settings, workdir / "dataset")
    config_path = workdir / "llamafactory.yaml"
    write_text_atomically(config_path, yaml.safe_dump(settings, allow_unicode=True, sort_keys=False))
    log.info(
        "%s: %d training records + %d extra, YAML %s",
        settings["dataset"],
        len(prompts),
        len(extra_records),
        config_path,
    )
    return config_path


def training_fingerprint(settings: dict, dataset_dir: str | Path) -> str:
    """A hash of the training YAML and dataset files: checkpoints resume only the very same training."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sorted(Path(dataset_dir).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def resume_settings(settings: dict, dataset_dir: str | Path) -> dict:
    """``settings`` plus what resumes from the last checkpoint in ``output_dir``, if an interrupted run of
    the same training left one; checkpoints of any other training are removed first.

    Without DeepSpeed a full or freeze fine-tune's weights are loaded from the checkpoint as the base
    model: transformers 5.x saves Qwen-VL keys under their original names and the trainer's own resume
    load then matches none of them, which would silently continue from the base weights. DeepSpeed restores
    its own model states, and a LoRA checkpoint holds only the adapter, which PEFT reloads by its names.
    """
    checkpoints = Path(settings["output_dir"])
    fingerprint = training_fingerprint(settings, dataset_dir)
    stamp = checkpoints / "fingerprint.txt"
    last = last_complete_checkpoint(checkpoints)
    if last and stamp.is_file() and stamp.read_text() == fingerprint:
        log.info("resuming the interrupted training from %s", last)
        # overwrite_output_dir false: LLaMA-Factory then appends to the trainer log instead of deleting it.
        resumed = {**settings, "resume_from_checkpoint": str(last), "overwrite_output_dir": False}
        if "deepspeed" not in settings and settings["finetuning_type"] != "lora":
            resumed["model_name_or_path"] = str(last)
            save_processor_into(last, settings["model_name_or_path"])
        return resumed
    if checkpoints.exists():
        log.info("removing %s: no checkpoint of this same training to resume from", checkpoints)
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True)
    stamp.write_text(fingerprint)
    return settings


def save_processor_into(checkpoint: Path, base_model: str) -> None:
    """Write the base model's processor and tokenizer into a checkpoint resumed as the base model.

    LLaMA-Factory saves them into a checkpoint after the trainer's state, so a job killed between the two
    leaves a checkpoint that is complete for the trainer but has no processor to load (seen in CI:
    "Processor was not found"). Training never changes them: the base model's are the checkpoint's.
    """
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(base_model).save_pretrained(checkpoint)


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The latest ``checkpoint-<step>`` whose save finished: the trainer writes its state file last, so a
    job killed while saving leaves a checkpoint without it."""
    complete = [path for path in checkpoints.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    return max(complete, key=lambda path: int(path.name.rsplit("-", 1)[1]), default=None)


def best_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint the trainer found best (its final ``trainer_state.json``), when it selected one."""
    state = checkpoints / "trainer_state.json"
    best = json.loads(state.read_text(encoding="utf-8")).get("best_model_checkpoint") if state.is_file() else None
    if best is None:
        return None
    # The state names it as the trainer saw it; it lies in this folder (the run may have been resumed).
    return checkpoints / Path(best).name


def take_best_weights(checkpoints: Path) -> None:
    """Replace the saved final weights by the best checkpoint's (see the module docstring), if selection ran."""
    best = best_checkpoint(checkpoints)
    if best is None:
        return
    weights = [path for pattern in WEIGHT_PATTERNS for path in best.glob(pattern)]
    if not weights:
        raise FileNotFoundError(f"{best}: the best checkpoint has no saved weights to keep")
    for path in [path for pattern in WEIGHT_PATTERNS for path in checkpoints.glob(pattern)]:
        path.unlink()
    for path in weights:
        shutil.copy2(path, checkpoints / path.name)
    log.info("kept the best checkpoint's weights: %s", best.name)


def collect_trained_model(checkpoints: str | Path, model_dir: str | Path, keep_best: bool = False) -> None:
    """Move the finished model (with ``keep_best``, the best checkpoint's weights) out of the checkpoints
    folder into the rule's output, then drop the checkpoints."""
    checkpoints, model_dir = Path(checkpoints), Path(model_dir)
    if keep_best:
        take_best_weights(checkpoints)
    model_dir.mkdir(parents=True, exist_ok=True)
    for path in checkpoints.iterdir():
        if not path.name.startswith("checkpoint-") and path.name != "fingerprint.txt":
            path.replace(model_dir / path.name)
    shutil.rmtree(checkpoints)


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
    fine_tuning: dict,
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
        # A local base model by its absolute path: a LoRA adapter records it to be loaded from anywhere.
        model=str(Path(model).resolve()) if Path(model).is_dir() else model,
        dataset_dir=workdir / "dataset",
        dataset=dataset,
        output_dir=workdir / "checkpoints",
        fine_tuning=fine_tuning,
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
    collect_trained_model(workdir / "checkpoints", workdir / "model", settings.get("load_best_model_at_end", False))
    return config_path


def train_fold(*, prompts: pd.DataFrame, folds: pd.DataFrame, fold: int, **training) -> Path:
    """Fine-tune one fold on its training part (the held-out fold never seen); see ``train_model``."""
    part = fold_training_part(prompts, folds, fold)
    if part.empty:
        raise ValueError(f"fold {fold} has no training records")
    return train_model(prompts=part, dataset=f"fold{fold}_train", **training)
