"""Model shapes, training FLOPs and the cards' spec peaks behind the GPU benchmark's MFU.

The shapes are the published configs of the models the recipe fine-tunes (Qwen2-VL-2B/7B-Instruct,
Qwen2.5-VL-3B/7B-Instruct), built with random weights by ``train_speed.py``. The FLOP count is the usual
model-FLOPs convention (PaLM's appendix B, as fms-fsdp and torchtitan report MFU): every weight matmul costs
2 FLOPs per weight per row forward and twice that backward, so 6 x weights x rows in training, and attention's
two matmuls (scores, then values) 4 x width FLOPs per query-key pair forward, 12 x width in training. Not
counted: norms, activations, softmax, rotary embeddings, the input embedding (a lookup), and the recomputation
gradient checkpointing adds (MFU counts the model's work, not the schedule's). A part nothing trained sits
below (the vision tower and projector when frozen, LLaMA-Factory's default on a pretrained model) runs forward
only: 2 x weights x rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool


@dataclass(frozen=True)
class VisionShape:
    """The vision tower: patch embedding, ``depth`` blocks of width ``width``, and the merger that turns each
    2 x 2 block of patches into one visual token of the text width. ``gated_mlp``: Qwen2.5-VL's SwiGLU blocks
    (three matrices) against Qwen2-VL's two. ``window_patches``: patches a windowed block attends within
    (Qwen2.5-VL: 112-pixel windows, 8 x 8 patches), in every block but ``full_attention_blocks``."""

    depth: int
    width: int
    heads: int
    intermediate: int
    gated_mlp: bool
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_patches: int | None = None
    full_attention_blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelShape:
    family: str  # vlmflow.model.families model_type
    text: TextShape
    vision: VisionShape


QWEN2_VL_TOWER = dict(depth=32, width=1280, heads=16, intermediate=5120, gated_mlp=False)
QWEN2_5_VL_TOWER = dict(
    depth=32,
    width=1280,
    heads=16,
    intermediate=3420,
    gated_mlp=True,
    window_patches=64,
    full_attention_blocks=(7, 15, 23, 31),
)
# From each model's config.json on the Hugging Face hub (Qwen/<name>-Instruct).
MODEL_SHAPES = {
    "qwen2-vl-2b": ModelShape(
        "qwen2_vl", TextShape(1536, 28, 12, 2, 128, 8960, 151936, True), VisionShape(**QWEN2_VL_TOWER)
    ),
    "qwen2-vl-7b": ModelShape(
        "qwen2_vl", TextShape(3584, 28, 28, 4, 128, 18944, 152064, False), VisionShape(**QWEN2_VL_TOWER)
    ),
    "qwen2.5-vl-3b": ModelShape(
        "qwen2_5_vl", TextShape(2048, 36, 16, 2, 128, 11008, 151936, True), VisionShape(**QWEN2_5_VL_TOWER)
    ),
    "qwen2.5-vl-7b": ModelShape(
        "qwen2_5_vl", TextShape(3584, 28, 28, 4, 128, 18944, 152064, False), VisionShape(**QWEN2_5_VL_TOWER)
    ),
}

# Dense bf16 tensor-core peaks from the vendors' data sheets (without sparsity), TFLOP/s, matched against
# torch.cuda.get_device_name in this order (the first name the device's name contains wins).
SPEC_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
)


def spec_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card (or CPU) not in the table."""
    return next((peak for name, peak in SPEC_PEAK_TFLOPS if name in device_name), None)


def text_matmul_weights(text: TextShape) -> int:
    """Weights of the language model's matmuls: attention and MLP of every layer, and the output head
    (a tied head is still a matmul); not the input embedding, a lookup."""
    attention = text.hidden * text.head_dim * (2 * text.heads + 2 * text.kv_heads)  # q, o; k, v
    mlp = 3 * text.hidden * text.intermediate  # gate, up, down
    return text.layers * (attention + mlp) + text.hidden * text.vocab


def vision_patch_weights(vision: VisionShape) -> int:
    """Matmul weights each patch passes through: the patch embedding (a convolution over
    3 x temporal x patch x patch pixels) and every block's attention (qkv, proj) and MLP."""
    embedding = 3 * vision.temporal_patch_size * vision.patch_size**2 * vision.width
    mlp = (3 if vision.gated_mlp else 2) * vision.width * vision.intermediate
    return embedding + vision.depth * (4 * vision.width**2 + mlp)


def merger_weights(vision: VisionShape, text_hidden: int) -> int:
    """The merger's two matmuls, applied once per visual token (merge_size² patches concatenated)."""
    merged = vision.width * vision.merge_size**2
    return merged * merged + merged * text_hidden


def vision_attention_pairs(vision: VisionShape, patches: int) -> int:
    """Query-key pairs over all blocks for one image of ``patches`` patches: every patch with every patch in
    full-attention blocks, with at most ``window_patches`` in windowed ones (windows at the image's edge are
    smaller, so this is an upper bound there)."""
    if vision.window_patches is None:
        return vision.depth * patches**2
    full = len(vision.full_attention_blocks)
    return full * patches**2 + (vision.depth - full) * patches * min(patches, vision.window_patches)


def sample_training_flops(
    shape: ModelShape, tokens: int, patches: int, *, vision_trained: bool, projector_trained: bool
) -> dict:
    """Training FLOPs of one sample: ``tokens`` non-padding tokens (visual tokens included) and one image of
    ``patches`` patches (0: a text-only sample), split by part."""
    text, vision = shape.text, shape.vision
    # Causal attention: query i sees keys 0..i, so a sequence of s tokens has s(s+1)/2 pairs.
    causal_pairs = tokens * (tokens + 1) // 2
    tower = 3 if vision_trained else 1
    merger = 3 if (vision_trained or projector_trained) else 1
    return {
        "text_matmuls": 6 * text_matmul_weights(text) * tokens,
        "text_attention": 12 * text.heads * text.head_dim * text.layers * causal_pairs,
        "vision_matmuls": 2 * tower * vision_patch_weights(vision) * patches,
        "vision_attention": 4 * tower * vision.width * vision_attention_pairs(vision, patches),
        "merger_matmuls": 2 * merger * merger_weights(vision, text.hidden) * (patches // vision.merge_size**2),
    }


def parameters(shape: ModelShape) -> int:
    """Parameters of the matmuls counted above plus the input embedding (untied), for the report: biases and
    norms are left out, so this is a little below the built model's count."""
    embedding = 0 if shape.text.tied_embeddings else shape.text.hidden * shape.text.vocab
    return (
        text_matmul_weights(shape.text)
        + embedding
        + vision_patch_weights(shape.vision)
        + merger_weights(shape.vision, shape.text.hidden)
    )


def shape_from_config(config: dict) -> ModelShape:
    """The shape of a saved Qwen2-VL or Qwen2.5-VL model, from its ``config.json``."""
    text, vision = config["text_config"], config["vision_config"]
    family = config["model_type"]
    if family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"model_type {family!r}: FLOPs are counted for qwen2_vl and qwen2_5_vl only")
    heads = text["num_attention_heads"]
    text_shape = TextShape(
        hidden=text["hidden_size"],
        layers=text["num_hidden_layers"],
        heads=heads,
        kv_heads=text["num_key_value_heads"],
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        intermediate=text["intermediate_size"],
        vocab=text["vocab_size"],
        tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
    )
    common = dict(
        depth=vision["depth"],
        heads=vision["num_heads"],
        patch_size=vision["patch_size"],
        temporal_patch_size=vision["temporal_patch_size"],
        merge_size=vision["spatial_merge_size"],
    )
    if family == "qwen2_vl":
        width = vision["embed_dim"]
        vision_shape = VisionShape(
            width=width, intermediate=int(width * vision["mlp_ratio"]), gated_mlp=False, **common
        )
    else:
        side = (
            vision["window_size"]
            // (vision["patch_size"] * vision["spatial_merge_size"])
            * vision["spatial_merge_size"]
        )
        vision_shape = VisionShape(
            width=vision["hidden_size"],
            intermediate=vision["intermediate_size"],
            gated_mlp=True,
            window_patches=side * side,
            full_attention_blocks=tuple(vision["fullatt_block_indexes"]),
            **common,
        )
    return ModelShape(family, text_shape, vision_shape)


def config_overrides(shape: ModelShape) -> tuple[dict, dict]:
    """The transformers ``text_config`` and ``vision_config`` keys that give a model ``shape``."""
    text = shape.text
    text_config = {
        "hidden_size": text.hidden,
        "num_hidden_layers": text.layers,
        "max_window_layers": text.layers,
        "num_attention_heads": text.heads,
        "num_key_value_heads": text.kv_heads,
        "head_dim": text.head_dim,
        "intermediate_size": text.intermediate,
        "vocab_size": text.vocab,
    }
    vision = shape.vision
    common = {"depth": vision.depth, "num_heads": vision.heads, "patch_size": vision.patch_size}
    if shape.family == "qwen2_vl":
        vision_config = common | {
            "embed_dim": vision.width,
            "mlp_ratio": vision.intermediate // vision.width,
            "hidden_size": text.hidden,
        }
    else:
        vision_config = common | {
            "hidden_size": vision.width,
            "intermediate_size": vision.intermediate,
            "out_hidden_size": text.hidden,
            "window_size": 112,
            "fullatt_block_indexes": list(vision.full_attention_blocks),
        }
    return text_config, vision_config
