"""One fold through the workflow's training rule under DeepSpeed ZeRO-3 with CPU offload, on the CPU."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2VLForConditionalGeneration

from conftest import run_snakemake, small_demo_config


@pytest.mark.slow
def test_zero3_offload_fold_trains_and_saves_a_loadable_changed_model(tmp_path):
    config = small_demo_config(tmp_path, variants=[{"name": "baseline"}])
    config["train"]["deepspeed"] = "z3_offload"
    run_snakemake(tmp_path, config, "--cores", "2", "results/baseline/fold0/model")

    fold = tmp_path / "results/baseline/fold0"
    assert (
        "deepspeed: " in (fold / "llamafactory.yaml").read_text()
        and "z3_offload.json" in (fold / "llamafactory.yaml").read_text()
    )
    log = (tmp_path / "logs/train/baseline/fold0.log").read_text(encoding="utf-8", errors="replace")
    assert "ZeRO" in log or "zero" in log  # DeepSpeed really ran the optimisation

    model = Qwen2VLForConditionalGeneration.from_pretrained(fold / "model")  # the consolidated 16-bit save loads
    assert sum(parameter.numel() for parameter in model.parameters()) > 0
    initial = load_file(tmp_path / "resources/demo/tiny-qwen2-vl/model.safetensors")
    trained = load_file(fold / "model" / "model.safetensors")
    assert trained.keys() == initial.keys()
    changed = [name for name in initial if not torch.equal(initial[name], trained[name].to(initial[name].dtype))]
    assert any(name.startswith("model.layers.") for name in changed)


@pytest.mark.slow
def test_two_rank_zero3_fold_trains_through_the_rule_saves_16bit_weights_and_scores(tmp_path):
    """Multi-rank DeepSpeed without GPUs: two CPU ranks shard the model under ZeRO-3."""
    config = small_demo_config(tmp_path, variants=[{"name": "baseline"}])
    config["train"] |= {"deepspeed": "z3", "processes": 2}
    run_snakemake(tmp_path, config, "--cores", "2", "results/baseline/fold0/oof_probs.parquet")

    log = (tmp_path / "logs/train/baseline/fold0.log").read_text(encoding="utf-8", errors="replace")
    assert "world size: 2" in log.lower() or "world_size=2" in log.replace(" ", "").lower()
    model_dir = tmp_path / "results/baseline/fold0/model"
    weights = load_file(model_dir / "model.safetensors")  # consolidated from the two ranks' shards
    initial = load_file(tmp_path / "resources/demo/tiny-qwen2-vl/model.safetensors")
    assert weights.keys() == initial.keys()
    assert all(weights[name].shape == initial[name].shape for name in initial)  # whole tensors, not shards
    Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    oof = pd.read_parquet(tmp_path / "results/baseline/fold0/oof_probs.parquet")
    assert len(oof) > 0 and np.allclose(oof.filter(like="p::").sum(axis=1), 1.0, atol=1e-5)
