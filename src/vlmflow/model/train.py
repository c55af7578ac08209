"""One fold's fine-tune (full, freeze or LoRA) through LLaMA-Factory's own CLI, on a YAML this module writes.

Model selection (``val_size``, ``eval_steps``, ``load_best_model_at_end``) happens inside LLaMA-Factory
on a split of the dataset it is given, and it is given only the fold's training part, so the
held-out fold never influences which checkpoint is kept and the out-of-fold predictions stay honest.

Checkpoints go to ``<workdir>/checkpoints``, which no rule declares: Snakemake deletes a failed job's
outputs, and a killed fine-tune must find its checkpoints on the rerun to resume from them. The
finished model is then moved into ``<workdir>/model`` (the rule's output) and the checkpoints removed.

With ``load_best_model_at_end`` the model kept is the best checkpoint's, taken from that checkpoint's
saved weights, and the trainer itself is never asked to reload it (see ``best_checkpoint_selection``):
under DeepSpeed its reload restores the optimizer state too (about 100 GB more host memory for a 7B with
offload), and without DeepSpeed transformers 5.x saves Qwen-VL weights under their original names, which
its reload (a non-strict ``load_state_dict``) matches none of, silently keeping the last step's weights.

The trainer runs in a process group of its own and ends with the job, however the job ends: see
``trainer_processes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import yaml

from vlmflow.prompting.prompts import write_llamafactory_dataset
from vlmflow.runtime.outputs import write_text_atomically

log = logging.getLogger(__name__)

# What a trainer's output folder holds as weights: a full (or freeze) model, or a LoRA adapter.
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# What a checkpoints folder's training was (its fingerprint and number of processes): resume_settings.
STAMP = "fingerprint.json"
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
    if settings.get("load_best_model_at_end"):
        settings |= best_checkpoint_selection(settings)
    if deepspeed_config is not None:
        settings["deepspeed"] = str(deepspeed_config)
        settings.pop("use_cpu", None)  # DeepSpeed picks its accelerator itself; use_cpu fights it
    return settings


def best_checkpoint_selection(settings: dict) -> dict:
    """The trainer arguments that make it find the best checkpoint by the validation metric without reloading it.

    With ``metric_for_best_model`` set the trainer records the best checkpoint (``best_model_checkpoint`` in its
    state) and its ``save_total_limit`` rotation keeps it beside the latest, so that limit 1 or 2 holds at most
    those two; ``take_best_weights`` then makes its weights the model. ``load_best_model_at_end`` is passed as
    false: the trainer's reload at the end would bring back the optimizer state too, for weights that are
    replaced anyway. A checkpoint is only recorded as best where it is saved at an evaluation, which the trainer
    checks only for its own reload: checked here instead.
    """
    save, evaluate = settings.get("save_strategy", "steps"), settings.get("eval_strategy", "no")
    # The trainer's defaults where a key is not set (its eval_steps falls back to logging_steps).
    save_steps = settings.get("save_steps", 500)
    eval_steps = settings.get("eval_steps") or settings.get("logging_steps", 500)
    if save != "best" and (save != evaluate or (save == "steps" and save_steps % eval_steps)):
        raise ValueError(
            f"load_best_model_at_end needs a checkpoint saved at an evaluation: save_strategy {save!r} every"
            f" {save_steps} steps, eval_strategy {evaluate!r} every {eval_steps} (make them match, with save_steps"
            " a multiple of eval_steps)"
        )
    return {"load_best_model_at_end": False, "metric_for_best_model": settings.get("metric_for_best_model", "loss")}


def write_training_inputs(
    prompts: pd.DataFrame, workdir: str | Path, settings: dict, extra_records: list[dict] = (), *, processes: int = 1
) -> Path:
    """Write the labelled prompts (plus text-only ``extra_records``) as a sharegpt dataset and the YAML
    under ``workdir``, resuming from the checkpoints of an interrupted identical run of as many ``processes``;
    return the YAML's path."""
    workdir = Path(workdir)
    write_llamafactory_dataset(prompts, workdir / "dataset", settings["dataset"], extra_records)
    settings = resume_settings(settings, workdir / "dataset", processes)
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


def resume_settings(settings: dict, dataset_dir: str | Path, processes: int) -> dict:
    """``settings`` plus what resumes from the last checkpoint in ``output_dir``, if an interrupted run of
    the same training with as many processes left one; checkpoints of any other training are removed first.

    The number of processes (torchrun's ranks, on the one node a fine-tune runs on) is part of what must match:
    DeepSpeed ZeRO-3 shards a checkpoint's model and optimizer states per rank, and another world size fails to
    load them at every retry.

    Without DeepSpeed a full or freeze fine-tune's weights are loaded from the checkpoint as the base
    model: transformers 5.x saves Qwen-VL keys under their original names and the trainer's own resume
    load then matches none of them, which would silently continue from the base weights. DeepSpeed restores
    its own model states, and a LoRA checkpoint holds only the adapter, which PEFT reloads by its names.
    """
    checkpoints = Path(settings["output_dir"])
    stamp = {"training": training_fingerprint(settings, dataset_dir), "processes": processes}
    stamp_path = checkpoints / STAMP
    written = json.loads(stamp_path.read_text(encoding="utf-8")) if stamp_path.is_file() else None
    last = last_complete_checkpoint(checkpoints)
    if last and written == stamp:
        log.info("resuming the interrupted training from %s", last)
        # overwrite_output_dir false: LLaMA-Factory then appends to the trainer log instead of deleting it.
        resumed = {**settings, "resume_from_checkpoint": str(last), "overwrite_output_dir": False}
        if "deepspeed" not in settings and settings["finetuning_type"] != "lora":
            resumed["model_name_or_path"] = str(last)
            save_processor_into(last, settings["model_name_or_path"])
        return resumed
    if last and written and written["training"] == stamp["training"]:
        log.info(
            "not resuming %s: it was written by %d processes, this run has %d", last, written["processes"], processes
        )
    if checkpoints.exists():
        log.info("removing %s: no checkpoint of this same training to resume from", checkpoints)
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True)
    stamp_path.write_text(json.dumps(stamp), encoding="utf-8")
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
        if not path.name.startswith("checkpoint-") and path.name != STAMP:
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
    """Run the trainer with its output appended to the rule's log; fail with the log's tail. Its processes
    end with this call, however it ends (``trainer_processes``)."""
    env = {**os.environ, **extra_env}
    # torchrun is looked up on PATH: make the running interpreter's bin folder come first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(log_path, "a", encoding="utf-8") as log_file, trainer_processes(command, env, log_file) as trainer:
        returncode = trainer.wait()
    output = Path(log_path).read_text(encoding="utf-8", errors="replace")
    if returncode != 0:
        tail = output.splitlines()[-30:]
        raise RuntimeError(
            f"llamafactory-cli train exited with {returncode}; last lines of {log_path}:\n" + "\n".join(tail)
        )


# Seconds the trainer's processes have to stop on SIGTERM before they are killed: torchrun stops its ranks
# on SIGTERM itself, and nothing the trainer writes on its way out (no checkpoint) is worth waiting longer for.
STOP_GRACE_SECONDS = 10
# The watchdog process: it ends the trainer's processes when the job's end closes its stdin, unless told "done".
WATCHDOG = "import sys; from vlmflow.model.train import watch_trainer; watch_trainer(int(sys.argv[1]))"


@contextlib.contextmanager
def trainer_processes(command: list[str], env: dict, log_file) -> Iterator[subprocess.Popen]:
    """Start the trainer in a session (and process group) of its own and end all of its processes with the job.

    The trainer is more than one process: ``llamafactory-cli`` starts torchrun, which starts every rank in a
    session of its own, out of reach of a signal to the trainer's group. So on any exit of the job, a
    signal (SIGTERM, SIGINT) or an error included, ``end_process_tree`` signals each process of the tree. If
    the job itself is killed (SIGKILL, the kernel's out-of-memory killer), a watchdog does it: a small
    process in a session of its own, so that a kill of the job's group spares it, that waits for the job's
    end to close its stdin. The simplest way that reaches the ranks: ``PR_SET_PDEATHSIG`` would reach only
    ``llamafactory-cli``, whose death leaves torchrun and the ranks running.
    """
    trainer = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    # The watchdog imports this module from its own folder: a job may import it through a path Snakemake added.
    source = str(Path(__file__).resolve().parents[2])
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(trainer.pid)],
        stdin=subprocess.PIPE,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))},
        start_new_session=True,
    )
    # Python's default SIGTERM ends the job at once, skipping the finally below: make it unwind as SIGINT does.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield trainer
    finally:
        try:
            end_process_tree(trainer.pid)  # after a normal end only what is left in its group (none, usually)
            watchdog.communicate(b"done")
            trainer.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # the exit status of a process ended by the signal


def watch_trainer(trainer: int) -> None:
    """The watchdog's body: wait for the job to end; if it ended without saying "done", end the trainer."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s watchdog: %(message)s")
    if sys.stdin.buffer.read() != b"done":
        log.warning("the job died: ending the trainer (process %d) and every process below it", trainer)
        end_process_tree(trainer)


def end_process_tree(root: int, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop ``root``, the processes below it and the rest of its process group: SIGTERM, then SIGKILL for what
    still runs after ``grace`` seconds. Each process is signalled by itself, for the ranks torchrun puts in
    sessions of their own; the group, for a process whose parent ended first (a data loader's worker)."""
    tree = process_tree(root)
    _signal_all(root, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (set(process_tree(root)) | set(tree)) & living_processes().keys():
        time.sleep(0.1)
    _signal_all(root, set(tree) | set(process_tree(root)), signal.SIGKILL)


def _signal_all(group: int, processes, signum: int) -> None:
    living = living_processes()
    for pid in [pid for pid in processes if pid in living]:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signum)
    with contextlib.suppress(ProcessLookupError):  # no process is left in the group
        os.killpg(group, signum)


def living_processes() -> dict[int, int]:
    """Every running process of the machine and its parent, from Linux's /proc (a zombie has ended: left out)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # ended while being listed
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]  # the name, in (), may hold spaces
            if state != "Z":
                parents[int(stat.parent.name)] = int(parent)
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and every running process below it, parents first."""
    parents = living_processes()
    tree = [root] if root in parents else []
    for pid in tree:  # grows while it is walked: each process's children join the walk
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


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
    config_path = write_training_inputs(prompts, workdir, settings, extra_records, processes=processes)
    command, env = llamafactory_command(config_path, deepspeed=deepspeed_config is not None, processes=processes)
    # The trainer's CPU thread pool follows the job's threads: more threads than cores was up to
    # 10x slower on a shared 2-core machine.
    env["OMP_NUM_THREADS"] = str(threads)
    run_llamafactory(command, {**env, **(extra_env or {})}, log_path)
    # The configured wish, not the YAML's: the YAML asks the trainer for no reload (best_checkpoint_selection).
    keep_best = hyperparameters.get("load_best_model_at_end", False)
    collect_trained_model(workdir / "checkpoints", workdir / "model", keep_best)
    return config_path


def train_fold(*, prompts: pd.DataFrame, folds: pd.DataFrame, fold: int, **training) -> Path:
    """Fine-tune one fold on its training part (the held-out fold never seen); see ``train_model``."""
    from vlmflow.data.folds import fold_training_part  # here: it imports scikit-learn (2 s), and so would the watchdog

    part = fold_training_part(prompts, folds, fold)
    if part.empty:
        raise ValueError(f"fold {fold} has no training records")
    return train_model(prompts=part, dataset=f"fold{fold}_train", **training)
