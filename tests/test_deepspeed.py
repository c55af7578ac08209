"""One fold through the workflow's training rule under DeepSpeed ZeRO-3 with CPU offload, on the CPU."""

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
