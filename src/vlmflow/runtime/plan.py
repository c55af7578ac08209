"""What a configured run will cost before it starts: its jobs (from Snakemake's own dry run), the disk its models
take, and an estimate of its GPU hours (`make plan`).

The jobs and their GPU leases are read from `snakemake -n`, so the plan counts exactly the DAG that would run.
Model sizes come from the base model's ``config.json`` through the model built on PyTorch's meta device (no
weights are read or allocated). GPU hours are estimates: the rates in the schema's ``plan`` section are measured
on one model and GPU (docs/benchmarks.md) and scaled by parameter count, since a forward and a backward cost
about 2 and 4 FLOPs per parameter and token.

Usage: ``python -m vlmflow.runtime.plan [snakemake options, e.g. --configfile my.yaml]``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
GB = 1e9
# Adam in mixed precision keeps an fp32 master copy and two fp32 moments per trainable parameter.
OPTIMIZER_BYTES_PER_PARAMETER = 12
SAVED_BYTES_PER_PARAMETER = 2  # bf16 weights
ADAPTER_BYTES_PER_PARAMETER = 4  # PEFT saves LoRA weights in float32
TRAINING_RULES = {"train_fold", "train_final"}
# Jobs that answer the held-out general records (workflow/rules/general.smk), greedily, a few tokens each.
GENERAL_ABILITY_RULES = {"evaluate_general_ability", "evaluate_base_general_ability"}
GENERAL_TOKENS_PER_ANSWER = 16  # a short checkable answer and the margin the job generates beyond it


@dataclass
class PlannedJob:
    rule: str
    wildcards: dict = field(default_factory=dict)
    gpus: int = 0


def planned_jobs(dry_run_output: str) -> list[PlannedJob]:
    """Every job a `snakemake -n` run prints (except the target rule ``all``), with its wildcards and GPUs."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        header = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not header or header[1] == "all":
            continue
        found = re.search(r"wildcards: (.*)", block)
        wildcards = dict(item.split("=", 1) for item in found[1].split(", ")) if found else {}
        gpus = re.search(r"resources: .*\bgpu=(\d+)", block)
        jobs.append(PlannedJob(header[1], wildcards, int(gpus[1]) if gpus else 0))
    return jobs


def load_config(configfiles: list[str | Path], overrides: dict | None = None) -> dict:
    """The configuration Snakemake would run: config/config.yaml, then each configfile merged over it, the
    schema's defaults filled in."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    update_config(config, overrides or {})
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


@dataclass
class ModelSize:
    parameters: int
    language_layers: int
    lora_parameters: int  # of rank 1 on every linear layer of the language model: scale by the rank

    @classmethod
    def of(cls, name_or_path: str | Path) -> ModelSize:
        """Parameter counts of the model a ``config.json`` describes, built without weights."""
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        from vlmflow.model.families import model_config

        settings = model_config(name_or_path)
        config = AutoConfig.for_model(**settings)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        linear = [
            module
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and "visual" not in name and "lm_head" not in name
        ]
        return cls(
            parameters=sum(parameter.numel() for parameter in model.parameters()),
            language_layers=config.get_text_config().num_hidden_layers,
            lora_parameters=sum(module.in_features + module.out_features for module in linear),
        )

    def saved_bytes(self, train: dict) -> float:
        """A fine-tune's saved model: a LoRA adapter, or every weight in bf16."""
        if train["finetuning_type"] == "lora":
            return self.lora_parameters * train["lora"]["rank"] * ADAPTER_BYTES_PER_PARAMETER
        return self.parameters * SAVED_BYTES_PER_PARAMETER

    def trainable(self, train: dict) -> float:
        if train["finetuning_type"] == "lora":
            return self.lora_parameters * train["lora"]["rank"]
        if train["finetuning_type"] == "freeze":
            layers = min(train["freeze"]["trainable_layers"], self.language_layers)
            return self.parameters * layers / self.language_layers
        return self.parameters


@dataclass
class RecordCounts:
    train: int
    test: int
    general_held_out: int = 0  # general records every final model answers (final.general_data.held_out)

    @classmethod
    def of(cls, config: dict, workdir: Path) -> RecordCounts:
        """The records in the configured data files; the demo's configured sizes where the demo makes them."""
        counts = []
        for split in ("train", "test"):
            path = workdir / config["data"][split]
            if path.is_file():
                counts.append(len(_records(path)))
            else:
                counts.append(config["demo"][f"n_{split}"])
        held_out = config["final"]["general_data"]["held_out"]
        if held_out and (workdir / held_out).is_file():
            counts.append(len(_records(workdir / held_out)))
        else:  # the demo's, not written yet, or none configured
            counts.append(config["demo"]["general_held_out"] if held_out else 0)
        return cls(*counts)


def _records(path: Path) -> list:
    import json

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [line for line in text.splitlines() if line.strip()]
    return json.loads(text)


@dataclass
class Plan:
    jobs: list[PlannedJob]
    config: dict
    size: ModelSize | None
    records: RecordCounts

    def job_counts(self) -> dict[str, tuple[int, int]]:
        """Per rule: jobs planned and GPUs each leases."""
        counts: dict[str, tuple[int, int]] = {}
        for job in self.jobs:
            planned, gpus = counts.get(job.rule, (0, 0))
            counts[job.rule] = (planned + 1, max(gpus, job.gpus))
        return counts

    def gpu_jobs(self) -> list[PlannedJob]:
        return [job for job in self.jobs if job.gpus]

    def disk_bytes(self) -> dict[str, float]:
        """Bytes the run's models take when it ends, and the transient checkpoints of one running fine-tune."""
        if self.size is None:
            return {}
        train, counts = self.config["train"], self.job_counts()
        fold_model = self.size.saved_bytes(train)
        full_model = self.size.parameters * SAVED_BYTES_PER_PARAMETER
        folds = counts.get("train_fold", (0, 0))[0]
        limit = train["hyperparameters"].get("save_total_limit", 1)
        checkpoint = fold_model + self.size.trainable(train) * OPTIMIZER_BYTES_PER_PARAMETER
        return {
            "fold models kept": folds * fold_model if train["keep_fold_models"] else 0.0,
            "fold models before scoring": folds * fold_model,
            "averaged fold models": counts.get("average_fold_models", (0, 0))[0] * full_model,
            "retrained final models": counts.get("train_final", (0, 0))[0] * fold_model,
            "checkpoints of one running fine-tune": limit * checkpoint,
        }

    def images_of(self, job: PlannedJob) -> float:
        """Images a job trains on (times epochs) or scores."""
        folds, shards = self.config["train"]["folds"], self.config["score"]["shards"]
        train, test = self.records.train, self.records.test
        epochs = self.config["train"]["hyperparameters"].get("num_train_epochs", 1)
        if job.rule == "train_fold":
            return train * (folds - 1) / folds * epochs
        if job.rule == "train_final":  # the corrected training set plus at most every test record as pseudo-labels
            pseudo = "pseudo" in job.wildcards.get("steps", "")
            return (train + (test if pseudo else 0)) * epochs
        if job.rule == "score_fold":
            return train / folds + test / shards
        if job.rule == "score_test_shard":
            return test / shards
        if job.rule == "score_final_model":
            return test
        return 0.0

    def gpu_hours(self) -> dict[str, float]:
        """Estimated GPU hours per rule of the GPU jobs, from the schema's measured rates scaled by size."""
        if self.size is None:
            return {}
        rates = self.config["plan"]
        scale = self.size.parameters / rates["reference_parameters"]
        reasons = {name for name, variant in _variants(self.config).items() if variant.generates_reason}
        hours: dict[str, float] = {}
        for job in self.gpu_jobs():
            images = self.images_of(job)
            if job.rule in TRAINING_RULES:
                seconds = images * rates["tokens_per_record"] / rates["train_tokens_per_second"] * scale
            elif job.rule in GENERAL_ABILITY_RULES:
                tokens = self.records.general_held_out * GENERAL_TOKENS_PER_ANSWER
                seconds = tokens * rates["generate_seconds_per_token"] * scale
            else:
                per_image = rates["score_seconds_per_image"]
                if job.wildcards.get("variant") in reasons:
                    per_image += self.config["score"]["max_new_tokens"] * rates["generate_seconds_per_token"]
                seconds = images * per_image * scale * job.gpus  # a scoring job is one process on one GPU
            hours[job.rule] = hours.get(job.rule, 0.0) + seconds / 3600
        return hours

    def render(self) -> str:
        lines = [f"Run plan: {self.records.train:,} training and {self.records.test:,} test records"]
        if self.size:
            lines.append(f"base model: {self.size.parameters:,} parameters, {self.config['train']['finetuning_type']}")
        gpu_jobs, hours = self.gpu_jobs(), self.gpu_hours()
        lines.append(f"jobs: {len(self.jobs)}, of which {len(gpu_jobs)} lease GPUs")
        if gpu_jobs:
            lines += ["", "| GPU rule | jobs | GPUs per job | estimated GPU hours |", "|---|---|---|---|"]
            for rule, (jobs, gpus) in sorted(self.job_counts().items()):
                if gpus:
                    estimate = f"{hours[rule]:,.2f}" if rule in hours else "?"
                    lines.append(f"| {rule} | {jobs} | {gpus} | {estimate} |")
            if hours:
                lines.append(f"| total | {len(gpu_jobs)} | | {sum(hours.values()):,.2f} |")
                lines.append("GPU hours from the schema's plan rates (measured on one model and GPU, scaled by size).")
        else:
            lines.append("No job leases a GPU (train.gpus_per_run is 0): the run is on the CPU.")
        disk = self.disk_bytes()
        if disk:
            lines += ["", "| disk | GB |", "|---|---|"]
            lines += [f"| {what} | {size / GB:,.1f} |" for what, size in disk.items()]
        else:
            lines.append("Model sizes: the demo's tiny model is built by the run; plan again once it exists.")
        return "\n".join(lines)


def _variants(config: dict) -> dict:
    from vlmflow.prompting.variants import PromptVariant

    return {entry["name"]: PromptVariant.from_config(entry) for entry in config["variants"]}


def base_model_of(config: dict, workdir: Path) -> str | None:
    """The base model to size: the configured one, or the demo's tiny model once the demo has built it."""
    from vlmflow.model.families import base_model

    name_or_path, _ = base_model(config["model"]["name_or_path"], config["demo"]["model_family"])
    if config["model"]["name_or_path"] is None and not (workdir / name_or_path / "config.json").is_file():
        return None
    local = workdir / name_or_path
    return str(local) if local.exists() else name_or_path


def make_plan(snakemake_args: list[str], workdir: Path = Path(".")) -> Plan:
    """The plan of `snakemake <snakemake_args>` run in ``workdir``."""
    configfiles = _option_values(snakemake_args, "--configfile", "--configfiles")
    dry_run = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", *snakemake_args],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if dry_run.returncode != 0:
        said = (dry_run.stdout + dry_run.stderr)[-3000:]
        raise RuntimeError(f"snakemake -n {' '.join(snakemake_args)} failed:\n{said}")
    config = load_config([workdir / path for path in configfiles])
    model = base_model_of(config, workdir)
    return Plan(
        jobs=planned_jobs(dry_run.stdout),
        config=config,
        size=ModelSize.of(model) if model else None,
        records=RecordCounts.of(config, workdir),
    )


def _option_values(args: list[str], *names: str) -> list[str]:
    """The values after any of ``names`` in a Snakemake command line (an option takes every word after it)."""
    values, taking = [], False
    for arg in args:
        if arg.startswith("-"):
            taking = arg in names
        elif taking:
            values.append(arg)
    return values


if __name__ == "__main__":
    print(make_plan(sys.argv[1:]).render())
