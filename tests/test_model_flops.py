"""The GPU benchmark's FLOP count (benchmarks/gpu/model_flops.py) against counts done by hand, and its model
shapes against the models transformers builds from them."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "model_flops.py"


@pytest.fixture(scope="module")
def flops():
    spec = importlib.util.spec_from_file_location("model_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_flops"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def small_shape(flops):
    text = flops.TextShape(
        hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=20, tied_embeddings=False
    )
    vision = flops.VisionShape(depth=1, width=4, heads=1, intermediate=8, gated_mlp=False, patch_size=2)
    return flops.ModelShape("qwen2_vl", text, vision)


def test_one_sample_of_a_small_model_costs_what_a_count_by_hand_says(flops):
    counted = flops.sample_training_flops(small_shape(flops), 5, 8, vision_trained=True, projector_trained=True)
    # Text matmuls per layer: q 8x8=64, k 8x4=32, v 32, o 64; gate, up, down 8x16=128 each: 192 + 384 = 576.
    # Two layers 1152, plus the head 8x20 = 160: 1312 weights; 6 FLOPs each per token, 5 tokens.
    assert counted["text_matmuls"] == 6 * 1312 * 5 == 39360
    # Causal: 5 tokens make 5+4+3+2+1 = 15 pairs; per pair and layer, scores 2x(2 heads x 4) = 16 and values
    # 16 forward, three times that in training: 96; two layers: 192.
    assert counted["text_attention"] == 15 * 192 == 2880
    # Per patch: embedding 3x2x2x2 pixels x 4 = 96; one block: qkv 4x12 = 48, proj 16, fc1 32, fc2 32 = 128.
    assert counted["vision_matmuls"] == 6 * (96 + 128) * 8 == 10752
    # Full attention within the image: 8x8 = 64 pairs, 2x4 + 2x4 = 16 FLOPs each forward, x3, one block.
    assert counted["vision_attention"] == 64 * 16 * 3 == 3072
    # Merger: 4 patches of width 4 concatenated (16), 16x16 + 16x8 = 384 weights, on 8/4 = 2 visual tokens.
    assert counted["merger_matmuls"] == 6 * 384 * 2 == 4608


def test_a_frozen_vision_tower_and_projector_run_forward_only(flops):
    counted = flops.sample_training_flops(small_shape(flops), 5, 8, vision_trained=False, projector_trained=False)
    assert counted["vision_matmuls"] == 2 * 224 * 8 == 3584
    assert counted["vision_attention"] == 64 * 16 == 1024
    assert counted["merger_matmuls"] == 2 * 384 * 2 == 1536
    assert counted["text_matmuls"] == 39360  # the language model trains either way


def test_windowed_blocks_attend_within_their_window(flops):
    vision = flops.VisionShape(
        depth=3, width=4, heads=1, intermediate=8, gated_mlp=True, window_patches=4, full_attention_blocks=(2,)
    )
    # One full block: 8x8 = 64 pairs; two windowed blocks: each of 8 patches with 4 = 32 pairs each.
    assert flops.vision_attention_pairs(vision, 8) == 64 + 2 * 32


def test_the_spec_peak_is_the_cards_dense_bf16_rate(flops):
    assert flops.spec_peak_tflops("NVIDIA H200") == 989.4
    assert flops.spec_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert flops.spec_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.spec_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert flops.spec_peak_tflops("CPU (x86_64)") is None


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2-vl-7b", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_the_shapes_build_models_of_the_published_size(flops, name):
    """A model built (on the meta device: no memory) from a shape's config keys reads back as that shape and has
    the counted matmul weights plus only biases and norms (under 0.1 % more)."""
    import torch
    import transformers

    shape = flops.MODEL_SHAPES[name]
    text, vision = flops.config_overrides(shape)
    config_class = {"qwen2_vl": transformers.Qwen2VLConfig, "qwen2_5_vl": transformers.Qwen2_5_VLConfig}[shape.family]
    config = config_class(text_config=text, vision_config=vision, tie_word_embeddings=shape.text.tied_embeddings)
    assert flops.shape_from_config(config.to_dict()) == shape
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    built = sum(parameter.numel() for parameter in model.parameters())
    assert 0 < built - flops.parameters(shape) < 0.001 * built
    if name == "qwen2-vl-2b":
        assert built == 2_208_985_600  # Qwen/Qwen2-VL-2B-Instruct's model card count
