"""`make plan`: the jobs of the configured DAG, the disk of its models and its GPU hours, before anything runs."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from dataclasses import replace

import pytest
import yaml

from vlmflow.runtime.plan import Machine, ModelSize, RecordCounts, make_plan

from conftest import NO_SLURM_CONTROLLER, REPO, small_demo_config

# config.json of Qwen2-VL-7B-Instruct (the recipe's model) as published: shapes only, no weights.
QWEN2_VL_7B = REPO / "tests" / "data" / "qwen2_vl_7b_config.json"
# Its safetensors index lists 16,582,751,232 bytes of bf16 weights: 8,291,375,616 parameters.
QWEN2_VL_7B_PARAMETERS = 8_291_375_616
# Of them, the language model and its head: what a full fine-tune trains with the vision tower (631,183,360) and the
# projector (44,575,744) frozen, LLaMA-Factory's default (tests/test_memory.py counts them).
QWEN2_VL_7B_LANGUAGE = 7_615_616_512


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
    assert size.trainable(freeze) == pytest.approx(QWEN2_VL_7B_LANGUAGE / 4)
    assert size.trainable({"finetuning_type": "full"}) == QWEN2_VL_7B_LANGUAGE
    tower_trained = {"finetuning_type": "full", "hyperparameters": {"freeze_vision_tower": False}}
    assert size.trainable(tower_trained) == QWEN2_VL_7B_PARAMETERS - 44_575_744  # the projector stays frozen


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


def test_the_plan_reads_the_configuration_snakemake_resolved(tmp_path, seven_b):
    """--config on the command line, the configfile in the run's own folder, the schema's defaults: what the
    Snakefile's parse made of them, not a merge of the files by hand."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(gpu_config(tmp_path, seven_b)), encoding="utf-8")
    shutil.copytree(REPO / "config", tmp_path / "config", dirs_exist_ok=True)
    one_variant = 'variants=[{"name": "baseline"}]'
    plan = make_plan(
        ["--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml", "--config", one_variant], tmp_path
    )
    assert [variant["name"] for variant in plan.config["variants"]] == ["baseline"]
    assert plan.config["train"]["gpus_per_run"] == 4  # the configfile's
    assert plan.job_counts()["train_fold"] == (1 * 2, 4)  # the jobs the dry run planned, and the config, agree
    assert plan.config["prompt"]["max_chars"] == 6000  # a schema default


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


def test_make_plan_prints_the_plan_of_the_demo():
    result = subprocess.run(
        ["make", "--no-print-directory", "plan", "SNAKEMAKE_ARGS=--configfile config/demo.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": str(REPO / "tests/slurm_without_controller.conf")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Run plan: 250 training and 120 test records" in result.stdout


def recipe_plan(workdir, model, machine: Machine | None = None):
    """The plan of the recipe's training (full, z3_offload, 4 GPUs per fine-tune, bf16, the vision tower and the
    projector frozen, best and latest checkpoint kept, validation of 10 % every 5 steps of 2 x 2 a GPU) on 400
    training records in 2 folds, one variant."""
    config = small_demo_config(
        workdir, model={"name_or_path": str(model)}, demo={"n_train": 400}, variants=[{"name": "baseline"}]
    )
    config["train"] |= {"gpus_per_run": 4, "deepspeed": "z3_offload", "finetuning_type": "full"}
    config["train"]["hyperparameters"] = {
        "bf16": True,
        "freeze_vision_tower": True,  # LLaMA-Factory's defaults, which config/config.yaml's demo block turns off
        "freeze_multi_modal_projector": True,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "val_size": 0.1,
        "eval_strategy": "steps",
        "eval_steps": 5,
        "save_strategy": "steps",
        "save_total_limit": 1,
        "load_best_model_at_end": True,
    }
    plan = plan_in(workdir, config)
    return replace(plan, machine=machine) if machine else plan


def test_the_plan_says_what_runs_at_once_on_the_recipes_machine_and_on_a_larger_one(tmp_path, seven_b):
    plan = recipe_plan(tmp_path, seven_b)
    assert plan.machine == Machine(gpus=4, gpu_mem_mb=24_000, host_mem_mb=120_000)  # the default: the recipe's
    # A full fine-tune with offload needs 182,247 MB of host memory (tests/test_memory.py): not one fits 120,000.
    assert plan.needs()["fine_tune"].host_mb == 182_247 and plan.at_once("fine_tune") == 0
    # Scoring: 20,521 MB on one card, 18,583 MB of host memory: the 4 cards, not the host's 6, limit it.
    assert plan.at_once("scoring") == min(4 // 1, 120_000 // 18_583) == 4
    assert plan.at_once("averaging") == 120_000 // 51_749 == 2  # a CPU job: host memory alone
    text = plan.render()
    assert "| train_fold, train_final (full, z3_offload) | 4 | 9,180 | 182,247 | none: does not fit | 0 |" in text
    assert "| score_fold, score_test_shard, score_final_model | 1 | 20,521 | 18,583 | 4 | 74,332 |" in text

    large = replace(plan, machine=Machine(gpus=8, gpu_mem_mb=80_000, host_mem_mb=1_000_000))
    assert large.at_once("fine_tune") == min(8 // 4, 1_000_000 // 182_247) == 2  # the GPUs limit it, not the host
    assert "| 2 | 364,494 |" in large.render()  # their host memory together, with offload
    # Their checkpoints: 2 fine-tunes x (best + latest + the one being written) x (bf16 model 2 B a parameter + the
    # fp32 master and Adam state, 12 B a trained one).
    checkpoints = next(value for key, value in large.disk_bytes().items() if key.startswith("checkpoints"))
    assert checkpoints == 2 * 3 * (2 * QWEN2_VL_7B_PARAMETERS + 12 * QWEN2_VL_7B_LANGUAGE)
    assert "checkpoints of the 2 fine-tune(s) running at once (3 each)" in large.render()


def test_gpu_hours_count_the_offload_and_the_validation_passes(tmp_path, seven_b):
    plan = recipe_plan(tmp_path, seven_b)
    fold = next(job for job in plan.jobs if job.rule == "train_fold")
    # 400 records in 2 folds: a fold trains on 200, 10 % of them held out to validate.
    per_token = QWEN2_VL_7B_PARAMETERS / 1_620_225_280 / 2_276 * 4.8  # scaled from the measured rate, offload x 4.8
    training = 200 * 0.9 * 1_100 * per_token  # 1,100 tokens a record
    # 180 records in steps of 2 x 2 on 4 GPUs: 11.25 steps, a validation pass every 5: 2 passes over 20 records,
    # each token a third of a training step's.
    validation = 2 * 20 * 1_100 * per_token / 3
    assert plan.training_seconds(fold) == pytest.approx((training, validation))
    assert plan.gpu_hours()["train_fold"] == pytest.approx(2 * (training + validation) / 3600)  # 2 folds
    z2 = copy.deepcopy(plan.config)
    z2["train"]["deepspeed"] = "z2"
    assert replace(plan, config=z2).gpu_hours()["train_fold"] == pytest.approx(plan.gpu_hours()["train_fold"] / 4.8)
    text = plan.render()
    assert "training 2,276 tokens/s a GPU: measured" in text and "4.8 times the training time, estimated" in text


def test_the_machine_options_are_the_plans_and_the_rest_snakemakes(monkeypatch):
    from vlmflow.runtime import plan as plan_module

    seen = {}
    monkeypatch.setattr(plan_module, "make_plan", lambda args, machine: seen.update(args=args, machine=machine))
    with pytest.raises(AttributeError):  # the stub returns no plan to render
        plan_module.main(
            ["--gpus", "8", "--gpu-mem-mb", "80000", "--configfile", "my.yaml", "--host-mem-mb", "1000000"]
        )
    assert seen == {"args": ["--configfile", "my.yaml"], "machine": Machine(8, 80_000, 1_000_000)}
