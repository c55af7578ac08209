"""Model families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and fine-tuning methods (full, freeze, LoRA) through the
workflow: each goes through its fold fine-tunes, scoring, the weight-averaged fold model, a retrained final
model, the submission and MLflow. The default family's full fine-tune is the end-to-end run's
(tests/test_workflow.py); per-family scoring and overfitting are in tests/test_scoring.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from vlmflow.data.labels import label_names, load_labels
from vlmflow.model.families import FAMILIES, UnsupportedModelError, base_model, family_of, model_config
from vlmflow.model.train import method_settings

from conftest import REPO, run_snakemake, small_demo_config

LABEL_NAMES = label_names(load_labels(REPO / "config" / "labels.yaml"))


def write_config(folder, model_type: str) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_model_folder_is_known_by_its_config_model_type(tmp_path, model_type):
    write_config(tmp_path / "model", model_type)
    assert family_of(tmp_path / "model").model_type == model_type
    # A LoRA adapter folder is known by its base model.
    (tmp_path / "adapter").mkdir()
    adapter_config = {"base_model_name_or_path": str(tmp_path / "model")}
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config), encoding="utf-8")
    assert family_of(tmp_path / "adapter").model_type == model_type


def test_an_unsupported_model_type_is_refused_naming_the_supported_ones(tmp_path):
    write_config(tmp_path / "llava", "llava")
    with pytest.raises(UnsupportedModelError, match="'llava'.*qwen2_vl.*qwen2_5_vl.*qwen3_vl"):
        family_of(tmp_path / "llava")


def test_a_hub_id_not_in_the_cache_fails_offline_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UnsupportedModelError, match="HF_HUB_OFFLINE is set.*hf download Qwen/Qwen2.5-VL-7B-Instruct"):
        model_config("Qwen/Qwen2.5-VL-7B-Instruct")


def cache_hub_config(cache, repo_id: str, model_type: str) -> None:
    """A Hugging Face cache holding only ``repo_id``'s config.json, as `hf download` leaves it."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    write_config(folder / "snapshots" / ("0" * 40), model_type)


def test_a_cached_hub_id_is_known_offline_and_a_dry_run_plans_with_its_template(tmp_path):
    cache = tmp_path / "hub"
    cache_hub_config(cache, "Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl")
    config = small_demo_config(tmp_path, model={"name_or_path": "Qwen/Qwen3-VL-8B-Instruct"})
    result = run_snakemake(
        tmp_path, config, "-n", "-p", "results/baseline/fold0/model", env={"HF_HUB_CACHE": str(cache)}
    )
    assert "rule train_fold" in result.stdout and "build_tiny_model" not in result.stdout


def test_a_cached_hub_id_is_known_by_its_config(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache_hub_config(tmp_path, "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    family = family_of("Qwen/Qwen2.5-VL-7B-Instruct")
    assert (family.model_type, family.template) == ("qwen2_5_vl", "qwen2_vl")


def test_the_demo_model_family_is_known_before_it_is_built():
    for model_type, family in FAMILIES.items():
        assert base_model(None, model_type) == (family.demo_model_dir, family)
        assert base_model(family.demo_model_dir, "qwen2_vl")[1] is family  # a demo folder named outright


def test_each_family_freezes_the_modules_llamafactory_freezes():
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    for model_type, family in FAMILIES.items():
        assert list(family.vision_tower) == COMPOSITE_MODELS[model_type].vision_model_keys
        assert list(family.projector) == COMPOSITE_MODELS[model_type].projector_keys


def test_each_family_names_a_llamafactory_template_with_its_default_system():
    from llamafactory.data.template import TEMPLATES

    for family in FAMILIES.values():
        assert TEMPLATES[family.template].default_system == (family.default_system or "")


def test_method_settings_are_llamafactory_arguments():
    assert method_settings("full", {}) == {"finetuning_type": "full"}
    assert method_settings("freeze", {"trainable_layers": 25, "trainable_modules": "all"}) == {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": 25,
        "freeze_trainable_modules": "all",
    }
    lora = method_settings("lora", {"rank": 8, "alpha": 16, "dropout": 0.0, "target": "all"})
    assert lora == {
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
    }
    with pytest.raises(ValueError, match="'qlora'"):
        method_settings("qlora", {})


def test_a_dry_run_with_an_unsupported_model_fails_at_start_naming_the_supported_families(tmp_path):
    write_config(tmp_path / "llava", "llava")
    config = small_demo_config(tmp_path, model={"name_or_path": str(tmp_path / "llava")})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "model_type 'llava' is not a supported family" in output
    assert "qwen2_5_vl (Qwen2.5-VL)" in output and "qwen3_vl (Qwen3-VL)" in output


# One small run per (family, method): the default family's other methods, and the other families' full
# fine-tunes. Baseline prompts only (no OCR), 2 folds, one retrained model, one pseudo-label round.
RUNS = [("qwen2_5_vl", "full"), ("qwen3_vl", "full"), ("qwen2_vl", "freeze"), ("qwen2_vl", "lora")]


def method_run_config(workdir, family: str, method: str) -> dict:
    config = small_demo_config(
        workdir,
        variants=[{"name": "baseline"}],
        demo={"n_train": 30, "n_test": 8, "seed": 5, "image_width": 180, "image_height": 320, "model_family": family},
        pseudo={"tau": 0.0, "min_agreeing_folds": 1, "per_class_cap": 2, "rounds": 1},
    )
    config["train"]["finetuning_type"] = method
    # Two of the tiny model's four layers, so that a frozen layer shows; LoRA with a high rate to move.
    config["train"]["freeze"] = {"trainable_layers": 2}
    config["train"]["lora"] = {"rank": 4, "alpha": 8}
    return config


@pytest.fixture(scope="module", params=RUNS, ids=lambda run: f"{run[0]}-{run[1]}")
def method_run(request, tmp_path_factory):
    family, method = request.param
    workdir = tmp_path_factory.mktemp(f"{family}-{method}")
    config = method_run_config(workdir, family, method)
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
    trained = load_file(model / "model.safetensors")
    # Saved names differ per family (Qwen2-VL: model.layers.*, visual.*; Qwen3-VL: model.language_model.*).
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    text_layer = re.compile(r"^model\.(language_model\.)?layers\.(\d+)\.")
    changed_layers = {int(match[2]) for name in changed if (match := text_layer.match(name))}
    if method == "full":
        assert changed_layers == {0, 1, 2, 3}
        assert any("visual" in name for name in changed)
    if method == "freeze":  # the last 2 of 4 decoder layers train; the first 2 and the embeddings do not
        assert changed_layers == {2, 3}
        assert not any("embed_tokens" in name for name in changed)


@pytest.mark.slow
def test_the_averaged_fold_model_is_a_full_model_that_scores(method_run):
    from transformers import AutoModelForImageTextToText

    from vlmflow.model.scoring import load_model

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
    retrained = workdir / "results/baseline/retrain/correction_pseudo/round1"
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
