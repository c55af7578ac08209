"""Every family and every fine-tuning method through the workflow: a Qwen2.5-VL freeze fine-tune and a Qwen3-VL
LoRA fine-tune, each through its fold fine-tunes, scoring, the weight-averaged fold model, a retrained final
model, the submission and MLflow. The default family's (Qwen2-VL) full fine-tune is the end-to-end run's
(tests/test_workflow.py); every family's full fine-tune through LLaMA-Factory, and its scoring, are in
tests/test_scoring.py. Each family and each method runs through the whole workflow once, rather than every
pair of them: such a run costs minutes on 2 cores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from vlmflow.data.labels import label_names, load_labels
from vlmflow.model.families import FAMILIES

from conftest import REPO, run_snakemake, small_demo_config
from helpers.weights import changed_tensors, text_layers

LABEL_NAMES = label_names(load_labels(REPO / "config" / "labels.yaml"))


# One small run per (family, method) pair below: with the end-to-end run's (qwen2_vl, full), every family and
# every method. Baseline prompts only (no OCR), 2 folds, one test shard, one retrained model, one pseudo-label round.
RUNS = [("qwen2_5_vl", "freeze"), ("qwen3_vl", "lora")]


def method_run_config(workdir, family: str, method: str) -> dict:
    config = small_demo_config(
        workdir,
        variants=[{"name": "baseline"}],
        demo={
            "n_train": 30,
            "n_test": 8,
            "seed": 5,
            "image_width": 180,
            "image_height": 320,
            "model_family": family,
            # Four text layers (the demo's model has two), so that freezing the first two shows.
            "model": {"text_layers": 4},
        },
        pseudo={"tau": 0.0, "min_agreeing_folds": 1, "per_class_cap": 2, "rounds": 1},
        # One test shard: score_fold scores every test record with the held-out ones, and merge_test_shards still
        # runs. Sharded scoring (the same scorer over a slice) is the end-to-end run's, checked there against
        # unsharded scoring; here it would be two more model loads per run.
        score={"shards": 1},
    )
    config["train"]["finetuning_type"] = method
    # Two of the four layers train; LoRA with a high rate to move.
    config["train"]["freeze"] = {"trainable_layers": 2}
    config["train"]["lora"] = {"rank": 4, "alpha": 8}
    return config


@pytest.fixture(scope="module", params=RUNS, ids=lambda run: f"{run[0]}-{run[1]}")
def method_run(request, tmp_path_factory, demo_models):
    family, method = request.param
    workdir = tmp_path_factory.mktemp(f"{family}-{method}")
    config = method_run_config(workdir, family, method)
    demo_models.into(workdir, config)
    run_snakemake(workdir, config, "--cores", "2", "results/baseline/mlflow_logged.json")
    return workdir, family, method


def fold_model(workdir, fold: int = 0):
    return workdir / f"results/baseline/fold{fold}/model"


@pytest.mark.slow
def test_the_fold_fine_tune_ran_with_the_family_template_and_the_method(method_run):
    workdir, family, method = method_run
    settings = yaml.safe_load((workdir / "results/baseline/fold0/llamafactory.yaml").read_text(encoding="utf-8"))
    assert settings["template"] == FAMILIES[family].template and settings["finetuning_type"] == method
    assert settings["model_name_or_path"] == str((workdir / FAMILIES[family].demo_model_dir).resolve())
    if method == "freeze":
        assert settings["freeze_trainable_layers"] == 2
    if method == "lora":
        assert (settings["lora_rank"], settings["lora_alpha"]) == (4, 8)
    log = (workdir / "logs/train/baseline/fold0.log").read_text(encoding="utf-8", errors="replace")
    assert "Fine-tuning method: " + {"full": "Full", "freeze": "Freeze", "lora": "LoRA"}[method] in log


@pytest.mark.slow
def test_the_fold_model_on_disk_is_what_the_method_trains(method_run):
    workdir, family, method = method_run
    base = load_file(workdir / FAMILIES[family].demo_model_dir / "model.safetensors")
    model = fold_model(workdir)
    if method == "lora":
        # Only the adapter: no copy of the base weights.
        assert (model / "adapter_model.safetensors").is_file() and not list(model.glob("model*.safetensors"))
        adapter = load_file(model / "adapter_model.safetensors")
        assert any("lora_A" in name for name in adapter) and any("lora_B" in name for name in adapter)
        assert sum(tensor.numel() for tensor in adapter.values()) < sum(tensor.numel() for tensor in base.values())
        return
    assert method == "freeze"  # the last 2 of 4 decoder layers train; the first 2 and the embeddings do not
    changed = changed_tensors(workdir / FAMILIES[family].demo_model_dir, model)
    assert text_layers(changed) == {2, 3}
    assert not any("embed_tokens" in name for name in changed)


@pytest.mark.slow
def test_the_averaged_fold_model_is_a_full_model_that_scores(method_run):
    from transformers import AutoModelForImageTextToText

    from vlmflow.model.encoding import load_model

    workdir, family, method = method_run
    averaged = workdir / "results/baseline/average_folds/model"
    assert not (averaged / "adapter_config.json").exists()
    model = AutoModelForImageTextToText.from_pretrained(averaged)
    assert model.config.model_type == family
    # The average of the two folds' (merged) weights, tensor by tensor.
    folds = [load_model(fold_model(workdir, fold)).state_dict() for fold in (0, 1)]
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (folds[0][name] + folds[1][name]) / 2, atol=1e-6, rtol=1e-5)
    probabilities = pd.read_parquet(workdir / "results/baseline/average_folds/test_probs.parquet")
    assert len(probabilities) == 8
    assert np.allclose(probabilities.filter(like="p::").sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_the_retrained_final_model_scores_and_the_submission_is_valid(method_run):
    workdir, family, method = method_run
    retrained = workdir / "results/baseline/retrain/correction_pseudo/seed42/round1"
    assert yaml.safe_load((retrained / "llamafactory.yaml").read_text(encoding="utf-8"))["finetuning_type"] == method
    assert (retrained / "model" / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).is_file()
    assert len(pd.read_parquet(retrained / "test_probs.parquet")) == 8
    submission_bytes = (workdir / "results/baseline/submission.csv").read_bytes()
    assert submission_bytes.startswith(b"\xef\xbb\xbf")
    submission = pd.read_csv(workdir / "results/baseline/submission.csv", encoding="utf-8-sig")
    truth = pd.read_csv(workdir / "resources/demo/truth.csv")
    assert list(submission.columns) == ["id", "predict"]
    assert sorted(submission["id"]) == sorted(truth.loc[truth["split"] == "test", "id"])
    assert submission["predict"].isin(LABEL_NAMES).all()


@pytest.mark.slow
def test_mlflow_holds_the_method_and_every_fold_and_final_run(method_run):
    workdir, family, method = method_run
    client = MlflowClient(f"sqlite:///{workdir / 'results/mlflow.db'}")
    experiment = client.get_experiment_by_name("vlmflow")
    runs = client.search_runs([experiment.experiment_id])
    folds = [run for run in runs if run.data.tags.get("level") == "fold"]
    finals = [run for run in runs if run.data.tags.get("level") == "final"]
    assert len(folds) == 2 and len(finals) == 1
    for run in folds + finals:
        assert run.data.params["llamafactory.finetuning_type"] == method
        assert run.data.params["llamafactory.template"] == FAMILIES[family].template
        assert "loss" in run.data.metrics
    variant = next(run for run in runs if run.data.tags.get("level") == "variant")
    assert "submission.test_weighted_f1" in variant.data.metrics
