"""Model families: a model is known by its config's model_type (folder, LoRA adapter, cached hub id), an
unsupported one fails at start naming the supported ones, and each family agrees with LLaMA-Factory."""

from __future__ import annotations

import json

import pytest

from vlmflow.model.families import FAMILIES, UnsupportedModelError, base_model, family_of, model_config

from conftest import run_snakemake, small_demo_config


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


def test_a_dry_run_with_an_unsupported_model_fails_at_start_naming_the_supported_families(tmp_path):
    write_config(tmp_path / "llava", "llava")
    config = small_demo_config(tmp_path, model={"name_or_path": str(tmp_path / "llava")})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "model_type 'llava' is not a supported family" in output
    assert "qwen2_5_vl (Qwen2.5-VL)" in output and "qwen3_vl (Qwen3-VL)" in output
