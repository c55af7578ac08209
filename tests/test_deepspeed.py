"""One fold through the workflow's training rule under DeepSpeed ZeRO-3 with CPU offload (the recipe's
`train.deepspeed` default), on two CPU ranks: what a multi-GPU fold does, without GPUs. ZeRO-3 on one rank,
killed and resumed, is tests/test_faults.py's."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2VLForConditionalGeneration

from conftest import run_snakemake, small_demo_config


@pytest.mark.slow
def test_two_rank_zero3_offload_fold_trains_through_the_rule_saves_changed_16bit_weights_and_scores(
    tmp_path, demo_models
):
    """One run rather than two (one rank with offload, two ranks without): the ranks shard the model under ZeRO-3
    and each offloads its optimizer states and parameters to the host, where DeepSpeed's CPU Adam steps them."""
    config = small_demo_config(tmp_path, variants=[{"name": "baseline"}])
    config["train"] |= {"deepspeed": "z3_offload", "processes": 2}
    demo_models.into(tmp_path, config)
    run_snakemake(tmp_path, config, "--cores", "2", "results/baseline/fold0/oof_probs.parquet")

    fold = tmp_path / "results/baseline/fold0"
    settings = (fold / "llamafactory.yaml").read_text(encoding="utf-8")
    assert "deepspeed: " in settings and "z3_offload.json" in settings
    log = (tmp_path / "logs/train/baseline/fold0.log").read_text(encoding="utf-8", errors="replace")
    assert "world size: 2" in log.lower() or "world_size=2" in log.replace(" ", "").lower()
    assert "Adam Optimizer #0 is created" in log  # DeepSpeed's CPU Adam stepped the offloaded states

    model = Qwen2VLForConditionalGeneration.from_pretrained(fold / "model")  # the consolidated 16-bit save loads
    assert sum(parameter.numel() for parameter in model.parameters()) > 0
    initial = load_file(tmp_path / "resources/demo/tiny-qwen2-vl/model.safetensors")
    trained = load_file(fold / "model" / "model.safetensors")  # consolidated from the two ranks' shards
    assert trained.keys() == initial.keys()
    assert all(trained[name].shape == initial[name].shape for name in initial)  # whole tensors, not shards
    changed = [name for name in initial if not torch.equal(initial[name], trained[name].to(initial[name].dtype))]
    assert any(name.startswith("model.layers.") for name in changed)

    oof = pd.read_parquet(fold / "oof_probs.parquet")
    assert len(oof) > 0 and np.allclose(oof.filter(like="p::").sum(axis=1), 1.0, atol=1e-5)
