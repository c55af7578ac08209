"""`make plan`: the jobs of the configured DAG, the disk of its models and its GPU hours, before anything runs."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from dataclasses import replace

import pytest
import yaml

from vlmflow.runtime.plan import ModelSize, RecordCounts, make_plan

from conftest import NO_SLURM_CONTROLLER, REPO, small_demo_config

# config.json of Qwen2-VL-7B-Instruct (the recipe's model) as published: shapes only, no weights.
QWEN2_VL_7B = REPO / "tests" / "data" / "qwen2_vl_7b_config.json"
# Its safetensors index lists 16,582,751,232 bytes of bf16 weights: 8,291,375,616 parameters.
QWEN2_VL_7B_PARAMETERS = 8_291_375_616


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2-vl-7b")
    shutil.copy(QWEN2_VL_7B, folder / "config.json")
    return folder


@pytest.fixture(autouse=True)
def no_slurm_controller(monkeypatch):
    """make_plan's `snakemake -n` runs in this process's environment (tests/conftest.py without_slurm_controller)."""
    monkeypatch.setenv("SLURM_CONF", str(NO_SLURM_CONTROLLER))


def plan_in(workdir, config: dict):
    """The plan of a workflow run of ``config`` in ``workdir`` (the repository's Snakefile)."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    shutil.copytree(REPO / "config", workdir / "config", dirs_exist_ok=True)
    args = ["--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
    return make_plan(args, workdir)


def gpu_config(workdir, model, **train) -> dict:
    config = small_demo_config(workdir, model={"name_or_path": str(model)}, score={"shards": 3})
    config["train"] |= {"gpus_per_run": 4, **train}
    return config


def test_the_model_size_is_counted_from_its_config_alone(seven_b):
    size = ModelSize.of(seven_b)
    assert size.parameters == QWEN2_VL_7B_PARAMETERS
    full = {"finetuning_type": "full"}
    assert size.saved_bytes(full) == 2 * QWEN2_VL_7B_PARAMETERS  # 16.6 GB a fold in bf16
    lora = {"finetuning_type": "lora", "lora": {"rank": 8}}
    assert 15e6 < size.trainable(lora) < 25e6  # rank 8 on every linear layer of the language model
    freeze = {"finetuning_type": "freeze", "freeze": {"trainable_layers": 7}}
    assert size.trainable(freeze) == pytest.approx(QWEN2_VL_7B_PARAMETERS / 4)


def test_the_plan_counts_the_dags_gpu_jobs_and_the_disk_of_its_models(tmp_path, seven_b):
    plan = plan_in(tmp_path, gpu_config(tmp_path, seven_b))
    counts = plan.job_counts()
    variants, folds, shards = 2, 2, 3
    assert counts["train_fold"] == (variants * folds, 4)
    assert counts["score_fold"] == (variants * folds, 1)
    assert counts["score_test_shard"] == (variants * folds * (shards - 1), 1)
    assert {job.rule for job in plan.gpu_jobs()} == {
        "train_fold",
        "score_fold",
        "score_test_shard",
        "train_final",
        "score_final_model",
        "evaluate_general_ability",  # each final model, and the base model, answer the held-out general records
        "evaluate_base_general_ability",
    }
    disk = plan.disk_bytes()
    assert disk["fold models kept"] == variants * folds * 2 * QWEN2_VL_7B_PARAMETERS
    assert disk["averaged fold models"] == variants * 2 * QWEN2_VL_7B_PARAMETERS
    hours = plan.gpu_hours()
    assert set(hours) == {job.rule for job in plan.gpu_jobs()} and all(value > 0 for value in hours.values())
    text = plan.render()
    assert "8,291,375,616 parameters" in text and "| train_fold | 4 | 4 |" in text and "| total |" in text


def test_removed_fold_models_are_not_counted_as_kept(tmp_path, seven_b):
    plan = plan_in(tmp_path, gpu_config(tmp_path, seven_b, keep_fold_models=False))
    disk = plan.disk_bytes()
    assert disk["fold models kept"] == 0 and disk["fold models before scoring"] > 0


def test_gpu_hours_grow_with_the_test_set_and_with_generated_reasons(tmp_path, seven_b):
    plan = plan_in(tmp_path, gpu_config(tmp_path, seven_b))
    base = plan.gpu_hours()
    doubled = replace(plan, records=RecordCounts(plan.records.train, 2 * plan.records.test)).gpu_hours()
    assert doubled["score_final_model"] == pytest.approx(2 * base["score_final_model"])
    assert doubled["train_fold"] == pytest.approx(base["train_fold"])  # the folds train on training records only
    reasoned = copy.deepcopy(plan.config)
    reasoned["variants"][1] |= {"reason": True}  # baseline_ocr now writes a reason before its label
    hours = replace(plan, config=reasoned).gpu_hours()
    assert hours["score_final_model"] > base["score_final_model"]
    assert hours["train_fold"] == pytest.approx(base["train_fold"])


def test_make_plan_prints_the_plan_of_the_shipped_config():
    result = subprocess.run(
        ["make", "--no-print-directory", "plan"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": str(REPO / "tests/slurm_without_controller.conf")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Run plan: 250 training and 120 test records" in result.stdout
