"""What a configured run will cost before it starts: its jobs (from Snakemake's own dry run), which of them run at
once on a given machine (default the recipe's 4 x 24 GB with 120 GB of host memory) and the memory they take
(vlmflow.runtime.memory), the disk its models and its running fine-tunes' checkpoints take, and an estimate of its
GPU hours, DeepSpeed's stage and the validation passes counted (`make plan`).

The jobs and their GPU leases are read from `snakemake -n`, so the plan counts exactly the DAG that would run.
Model sizes come from the base model's ``config.json`` through the model built on PyTorch's meta device (no
weights are read or allocated). GPU hours are estimates: the rates in the schema's ``plan`` section are measured
on one model and GPU (docs/benchmarks.md) and scaled by parameter count, since a forward and a backward cost
about 2 and 4 FLOPs per parameter and token.

Usage: ``python -m vlmflow.runtime.plan [--gpus 4 --gpu-mem-mb 24000 --host-mem-mb 120000] [snakemake options, e.g.
--configfile my.yaml]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlmflow.data.labels import load_labels
from vlmflow.runtime.memory import (
    ADAM_BYTES,
    MASTER_BYTES,
    WEIGHT_BYTES,
    JobMemory,
    ModelSize,
    model_size,  # noqa: F401 (the plan's model size, as it always was imported from here)
    rule_memory,
)

REPO = Path(__file__).resolve().parents[3]
GB = 1e9
# A checkpoint holds the saved model and the optimizer's state: the fp32 master copy and Adam's two moments.
OPTIMIZER_BYTES_PER_PARAMETER = MASTER_BYTES[True] + ADAM_BYTES
SAVED_BYTES_PER_PARAMETER = WEIGHT_BYTES[True]
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


# Where the workflow writes the configuration it resolved (workflow/rules/common.smk), when this is set: the plan
# reads what Snakemake itself made of the Snakefile's configfile, the command line and the schema's defaults.
RESOLVED_CONFIG_ENV = "VLMFLOW_RESOLVED_CONFIG"


def write_resolved_config(config: dict) -> None:
    """Write the workflow's ``config`` where $VLMFLOW_RESOLVED_CONFIG says (a parse of the Snakefile; nothing
    without it)."""
    path = os.environ.get(RESOLVED_CONFIG_ENV)
    if path:
        Path(path).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")


def load_config(configfiles: list[str | Path], overrides: dict | None = None) -> dict:
    """The configuration of the checkout's config/config.yaml, then each configfile merged over it, the schema's
    defaults filled in, as Snakemake merges them: for code that sizes or checks a run without starting Snakemake
    (tests, benchmarks). ``make_plan`` reads the configuration Snakemake resolved instead."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    update_config(config, overrides or {})
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


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


@dataclass(frozen=True)
class Machine:
    """The machine the plan runs on. The default is the recipe's (docs/mire.md): 4 x A30 of 24 GB, about 120 GB
    of host memory."""

    gpus: int = 4
    gpu_mem_mb: int = 24_000  # each card
    host_mem_mb: int = 120_000


# Which jobs run together, by the kinds of vlmflow.runtime.memory.rule_memory.
JOB_KINDS = {
    "fine_tune": ("train_fold", "train_final"),
    "scoring": ("score_fold", "score_test_shard", "score_final_model"),
    "general_ability": tuple(sorted(GENERAL_ABILITY_RULES)),
    "averaging": ("average_fold_models",),
}
# A fine-tune's time per token against the plan rates' own stage (ZeRO-2), by train.deepspeed.
STAGE_TIME = {
    "none": (1.0, "estimated: as ZeRO-2, one GPU's work without sharding"),
    "z2": (1.0, "measured: the rates' own stage"),
    "z3": (2.7, "measured: 2.6 to 2.8 times ZeRO-2's step on one H200 (docs/benchmarks.md)"),
    "z3_offload": (4.8, "estimated: DeepSpeed issue 3901 reports about 4.8 times the step with offload"),
}
# A validation pass forwards the val_size share of a fine-tune's records: about a third of a training step's
# work per token (2 of the 6 FLOPs per parameter and token of a forward and backward).
EVALUATION_SHARE = 1 / 3
# The trainer keeps the best checkpoint and the latest (save_total_limit 1 with best-model selection), and writes
# the next before it removes one.
CHECKPOINTS_WRITING = 1


@dataclass
class Plan:
    jobs: list[PlannedJob]
    config: dict
    size: ModelSize | None
    records: RecordCounts
    machine: Machine = field(default_factory=Machine)
    labels: int = 25  # the label set's size, which widens the scoring cache

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
        checkpoint = fold_model + self.size.trainable(train) * OPTIMIZER_BYTES_PER_PARAMETER
        running = max(1, self.at_once("fine_tune"))
        return {
            "fold models kept": folds * fold_model if train["keep_fold_models"] else 0.0,
            "fold models before scoring": folds * fold_model,
            "averaged fold models": counts.get("average_fold_models", (0, 0))[0] * full_model,
            "retrained final models": counts.get("train_final", (0, 0))[0] * fold_model,
            f"checkpoints of the {running} fine-tune(s) running at once "
            f"({self.checkpoints_per_fine_tune()} each)": running * self.checkpoints_per_fine_tune() * checkpoint,
        }

    def checkpoints_per_fine_tune(self) -> int:
        """Checkpoints one running fine-tune has on disk at its peak: those it keeps (save_total_limit, and the best
        beside the latest when the best is selected) and the one being written."""
        hyperparameters = self.config["train"]["hyperparameters"]
        kept = hyperparameters.get("save_total_limit", 1)
        if hyperparameters.get("load_best_model_at_end", False):
            kept = max(kept, 2)
        return kept + CHECKPOINTS_WRITING

    def needs(self) -> dict[str, JobMemory]:
        """What one job of each kind needs (vlmflow.runtime.memory)."""
        return rule_memory(self.config, self.size, self.labels) if self.size else {}

    def at_once(self, kind: str) -> int:
        """How many jobs of a kind fit the machine together (0: not one): by its GPUs, its cards' memory and the
        host memory they need together."""
        need = self.needs().get(kind)
        if need is None:
            return 0
        if need.gpus and (need.gpu_mb > self.machine.gpu_mem_mb or need.gpus > self.machine.gpus):
            return 0
        by_host = self.machine.host_mem_mb // need.host_mb
        return min(self.machine.gpus // need.gpus, by_host) if need.gpus else by_host

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

    def training_seconds(self, job: PlannedJob) -> tuple[float, float]:
        """GPU seconds of a fine-tune's training steps and of its validation passes: the measured rate scaled by
        parameters and by the DeepSpeed stage's time (STAGE_TIME)."""
        rates, train = self.config["plan"], self.config["train"]
        hyperparameters = train["hyperparameters"]
        per_token = self.size.parameters / rates["reference_parameters"] / rates["train_tokens_per_second"]
        per_token *= STAGE_TIME[train["deepspeed"]][0]
        images = self.images_of(job)
        training = images * (1 - hyperparameters.get("val_size", 0)) * rates["tokens_per_record"] * per_token
        # The trainer holds val_size of the records out and validates them every eval_steps optimizer steps.
        validation = images * hyperparameters.get("val_size", 0) / hyperparameters.get("num_train_epochs", 1)
        batch = (
            hyperparameters.get("per_device_train_batch_size", 1)
            * hyperparameters.get("gradient_accumulation_steps", 1)
            * max(1, train["gpus_per_run"])
        )
        passes = 0
        if hyperparameters.get("eval_strategy", "no") == "steps":
            passes = int(images * (1 - hyperparameters.get("val_size", 0)) / batch // hyperparameters["eval_steps"])
        evaluation = passes * validation * rates["tokens_per_record"] * per_token * EVALUATION_SHARE
        return training, evaluation

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
                seconds = sum(self.training_seconds(job))
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
                lines += ["", *self.rate_lines()]
        else:
            lines.append("No job leases a GPU (train.gpus_per_run is 0): the run is on the CPU.")
        if self.size:
            lines += ["", *self.concurrency_lines()]
        disk = self.disk_bytes()
        if disk:
            lines += ["", "| disk | GB |", "|---|---|"]
            lines += [f"| {what} | {size / GB:,.1f} |" for what, size in disk.items()]
        else:
            lines.append("Model sizes: the demo's tiny model is built by the run; plan again once it exists.")
        return "\n".join(lines)

    def concurrency_lines(self) -> list[str]:
        """Which jobs of each kind run at once on the machine, and the memory they take together."""
        machine = self.machine
        lines = [
            f"On {machine.gpus} GPUs of {machine.gpu_mem_mb:,} MB and {machine.host_mem_mb:,} MB of host memory "
            "(--gpus, --gpu-mem-mb, --host-mem-mb; vlmflow.runtime.memory, estimated):",
            "",
            "| jobs | GPUs each | MB a GPU each | MB host each | at once | MB host at once |",
            "|---|---|---|---|---|---|",
        ]
        train = self.config["train"]
        for kind, need in self.needs().items():
            rules = JOB_KINDS[kind]
            if not any(rule in rules for rule, _ in self.job_counts().items()):
                continue
            name = ", ".join(rule for rule in rules if rule in self.job_counts())
            if kind == "fine_tune":
                name += f" ({train['finetuning_type']}, {train['deepspeed']})"
            together = self.at_once(kind)
            fits = f"{together}" if together else "none: does not fit"
            lines.append(
                f"| {name} | {need.gpus} | {need.gpu_mb:,} | {need.host_mb:,} | {fits} | {together * need.host_mb:,} |"
            )
        return lines

    def rate_lines(self) -> list[str]:
        """Each rate the GPU hours come from, labelled measured or estimated."""
        rates, stage = self.config["plan"], self.config["train"]["deepspeed"]
        factor, said = STAGE_TIME[stage]
        return [
            "GPU hours from these rates (the schema's plan section; docs/benchmarks.md):",
            f"- training {rates['train_tokens_per_second']:,} tokens/s a GPU: measured (H200, ZeRO-2, a 1.6 B model)",
            f"- scoring {rates['score_seconds_per_image']} s an image, generation "
            f"{rates['generate_seconds_per_token']} s a token: measured (H200)",
            f"- scaled by parameters ({self.size.parameters:,} / {rates['reference_parameters']:,}): estimated",
            f"- DeepSpeed {stage}: {factor} times the training time, {said}",
            f"- validation passes every eval_steps on val_size of the records, {EVALUATION_SHARE:.2f} of a training "
            "step's time a token: estimated",
            "- another card than an H200 (an A30 is several times slower): not counted",
        ]


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


def make_plan(snakemake_args: list[str], workdir: Path = Path("."), machine: Machine | None = None) -> Plan:
    """The plan of `snakemake <snakemake_args>` run in ``workdir`` on ``machine`` (default: the recipe's)."""
    with tempfile.TemporaryDirectory() as scratch:
        resolved = Path(scratch) / "config.json"
        dry_run = subprocess.run(
            [str(Path(sys.executable).parent / "snakemake"), "-n", *snakemake_args],
            cwd=workdir,
            capture_output=True,
            text=True,
            env={**os.environ, RESOLVED_CONFIG_ENV: str(resolved)},
        )
        if dry_run.returncode != 0:
            said = (dry_run.stdout + dry_run.stderr)[-3000:]
            raise RuntimeError(f"snakemake -n {' '.join(snakemake_args)} failed:\n{said}")
        config = json.loads(resolved.read_text(encoding="utf-8"))
    model = base_model_of(config, workdir)
    return Plan(
        jobs=planned_jobs(dry_run.stdout),
        config=config,
        size=model_size(model) if model else None,
        records=RecordCounts.of(config, workdir),
        machine=machine or Machine(),
        labels=len(load_labels(workdir / config["labels"])),
    )


def main(argv: list[str]) -> str:
    """The plan's text; the machine's options are the plan's, every other argument is Snakemake's."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description="The plan of a run before it starts.")
    parser.add_argument("--gpus", type=int, default=Machine.gpus, help="GPUs of the machine")
    parser.add_argument("--gpu-mem-mb", type=int, default=Machine.gpu_mem_mb, help="MB of each GPU")
    parser.add_argument("--host-mem-mb", type=int, default=Machine.host_mem_mb, help="MB of host memory")
    options, snakemake_args = parser.parse_known_args(argv)
    machine = Machine(options.gpus, options.gpu_mem_mb, options.host_mem_mb)
    return make_plan(snakemake_args, machine=machine).render()


if __name__ == "__main__":
    print(main(sys.argv[1:]))
