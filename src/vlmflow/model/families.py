"""The model families vlmflow fine-tunes, and what differs between them.

A family is decided by the ``model_type`` in the model folder's ``config.json`` (a hub id's config is
read from the Hugging Face cache, or fetched unless ``HF_HUB_OFFLINE`` is set). Everything else that
depends on the family is here: LLaMA-Factory's template, the vision tower and projector modules (the
names LLaMA-Factory's freeze flags use), the pixels behind one visual token, the tokens and chat template
of the family's tokenizer, and the shape of a tiny random-weight demo model of its real architecture.

Scoring takes its token layout from the LLaMA-Factory template named here (the ``PromptEncoder`` of
``vlmflow.model.encoding``), and the transformers backend (``vlmflow.model.scoring``) its M-RoPE positions from the
model's own ``get_rope_index``, the function LLaMA-Factory's collator calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# Qwen2's added tokens, in Qwen's order. Processors and LLaMA-Factory's templates refer to them by text;
# model configs refer to them by id, so ids are read back from the tokenizer.
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen3's tokenizer adds tool and thinking tokens after the vision ones.
QWEN3_SPECIAL_TOKENS = (*QWEN2_SPECIAL_TOKENS, "<tool_call>", "</tool_call>", "<think>", "</think>")


def _chat_template(default_system: str | None) -> str:
    """Qwen's ChatML chat template with images as <|vision_start|><|image_pad|><|vision_end|>, which the
    processor expands to one pad per visual token; Qwen2-VL opens with a default system turn, Qwen3-VL not."""
    system = (
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\n{default_system}<|im_end|>\n{{% endif %}}"
        if default_system
        else ""
    )
    return (
        "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
        "{% for message in messages %}"
        f"{system}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        "{% set image_count.value = image_count.value + 1 %}"
        "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'video' or 'video' in content %}"
        "{% set video_count.value = video_count.value + 1 %}"
        "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
        "<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


@dataclass(frozen=True)
class TinySize:
    """The demo's toy dimensions (config demo.model)."""

    text_hidden_size: int = 128
    text_layers: int = 2
    vision_depth: int = 2


def _mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """(temporal, height, width) shares of each head's rotary half, in the real models' proportions
    (Qwen2-VL 16/24/24 of 64; Qwen3-VL 24/20/20 of 64, interleaved)."""
    half = head_dim // 2
    if interleaved:
        spatial = 5 * half // 16
        return [half - 2 * spatial, spatial, spatial]
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


def _text_config(tokenizer, ids: dict, size: TinySize, *, interleaved: bool = False) -> dict:
    heads = max(1, size.text_hidden_size // 32)
    head_dim = size.text_hidden_size // heads
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim, interleaved)}
    if interleaved:
        rope["mrope_interleaved"] = True
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.text_hidden_size,
        "intermediate_size": 4 * size.text_hidden_size,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "max_position_embeddings": 32768,
        "rope_parameters": rope,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _token_ids(tokenizer) -> dict:
    tokens = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}


def _vision_token_ids(ids: dict) -> dict:
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }


# The merger projects visual tokens into the text stream: its output width must be the text width,
# or the forward fails with "Image features and image tokens do not match".
def _tiny_qwen2_vl(tokenizer, size: TinySize):
    from transformers import Qwen2VLConfig

    ids = _token_ids(tokenizer)
    text = _text_config(tokenizer, ids, size) | {"max_window_layers": size.text_layers}
    vision = {"depth": size.vision_depth, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2}
    vision["hidden_size"] = size.text_hidden_size
    return Qwen2VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(ids))


def _tiny_qwen2_5_vl(tokenizer, size: TinySize):
    from transformers import Qwen2_5_VLConfig

    ids = _token_ids(tokenizer)
    text = _text_config(tokenizer, ids, size) | {"max_window_layers": size.text_layers}
    # Window attention in every block but the last, as the real tower alternates (7, 15, 23, 31 full).
    vision = {"depth": size.vision_depth, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4}
    vision |= {"out_hidden_size": size.text_hidden_size, "fullatt_block_indexes": [size.vision_depth - 1]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(ids))


def _tiny_qwen3_vl(tokenizer, size: TinySize):
    from transformers import Qwen3VLConfig

    ids = _token_ids(tokenizer)
    text = _text_config(tokenizer, ids, size, interleaved=True)
    # DeepStack: the first block's features are also added into the first text layers, as in the real model.
    vision = {"depth": size.vision_depth, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4}
    vision |= {"out_hidden_size": size.text_hidden_size, "num_position_embeddings": 256}
    vision["deepstack_visual_indexes"] = [0]
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(ids))


@dataclass(frozen=True)
class ModelFamily:
    """What differs per family: one entry of ``FAMILIES``."""

    model_type: str  # config.json's model_type
    title: str  # as people say it
    template: str  # LLaMA-Factory's template (the instruct one, without thinking)
    vision_tower: tuple[str, ...]  # module names LLaMA-Factory's freeze_vision_tower freezes
    projector: tuple[str, ...]  # ... and freeze_multi_modal_projector
    patch_size: int  # pixels per patch side; spatial_merge_size 2 x 2 patches make one visual token
    special_tokens: tuple[str, ...]
    default_system: str | None  # the chat template's system turn when none is given
    tiny_config: Callable  # (tokenizer, TinySize) -> the transformers config of a toy-size model
    processor_classes: tuple[str, str, str]  # processor, image processor, video processor (transformers)
    example_hub_id: str

    merge_size: int = 2

    @property
    def pixels_per_visual_token(self) -> int:
        return (self.patch_size * self.merge_size) ** 2

    @property
    def chat_template(self) -> str:
        return _chat_template(self.default_system)

    @property
    def demo_name(self) -> str:
        """The family in demo folder names (qwen2-vl): the rules' ``demo_model`` wildcard."""
        return self.model_type.replace("_", "-")

    @property
    def demo_model_dir(self) -> str:
        """Where the workflow builds this family's tiny random-weight demo model."""
        return f"resources/demo/tiny-{self.demo_name}"

    @property
    def demo_pretrained_dir(self) -> str:
        """Where the workflow trains that tiny model on generic screen reading (``vlmflow.demo.pretrain``)."""
        return f"resources/demo/pretrained-{self.demo_name}"


QWEN2_VL = ModelFamily(
    model_type="qwen2_vl",
    title="Qwen2-VL",
    template="qwen2_vl",
    vision_tower=("visual.patch_embed", "visual.blocks"),
    projector=("visual.merger",),
    patch_size=14,
    special_tokens=QWEN2_SPECIAL_TOKENS,
    default_system="You are a helpful assistant.",
    tiny_config=_tiny_qwen2_vl,
    processor_classes=("Qwen2VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
    example_hub_id="Qwen/Qwen2-VL-7B-Instruct",
)

FAMILIES: dict[str, ModelFamily] = {
    family.model_type: family
    for family in (
        QWEN2_VL,
        # Qwen2-VL's template (LLaMA-Factory serves both with one), modules, patches and tokens; its own processor
        # and window-attention vision config.
        replace(
            QWEN2_VL,
            model_type="qwen2_5_vl",
            title="Qwen2.5-VL",
            tiny_config=_tiny_qwen2_5_vl,
            processor_classes=("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
            example_hub_id="Qwen/Qwen2.5-VL-7B-Instruct",
        ),
        ModelFamily(
            model_type="qwen3_vl",
            title="Qwen3-VL",
            template="qwen3_vl_nothink",  # the Instruct models; qwen3_vl is the Thinking models' template
            vision_tower=("visual.pos_embed", "visual.patch_embed", "visual.blocks", "visual.deepstack_merger_list"),
            projector=("visual.merger",),
            patch_size=16,
            special_tokens=QWEN3_SPECIAL_TOKENS,
            default_system=None,
            tiny_config=_tiny_qwen3_vl,
            processor_classes=("Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLVideoProcessor"),
            example_hub_id="Qwen/Qwen3-VL-8B-Instruct",
        ),
    )
}


class UnsupportedModelError(ValueError):
    """The model's config names a model_type vlmflow has no family for, or cannot be read."""


def supported() -> str:
    return ", ".join(f"{family.model_type} ({family.title})" for family in FAMILIES.values())


def family_named(model_type: str) -> ModelFamily:
    """The family of a ``model_type``; an unknown one fails naming the supported ones."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not a supported family; supported: {supported()}")
    return FAMILIES[model_type]


def model_config(name_or_path: str | Path) -> dict:
    """The ``config.json`` of a model folder, of a LoRA adapter's base model, or of a hub id."""
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    if (path / "adapter_config.json").is_file():  # a LoRA fold keeps only its adapter
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        return model_config(base)
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise UnsupportedModelError(f"{name_or_path}: no config.json there, and it is not a hub id (owner/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(str(name_or_path), "config.json")).read_text(encoding="utf-8"))
    except LocalEntryNotFoundError as error:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        raise UnsupportedModelError(
            f"cannot read the config of {name_or_path}: it is not in the Hugging Face cache{offline}. "
            f"Download it first (`hf download {name_or_path}`) or point model.name_or_path at a local folder."
        ) from error
    except HFValidationError as error:
        raise UnsupportedModelError(f"{name_or_path}: not a local folder nor a valid hub id ({error})") from error


def family_of(name_or_path: str | Path) -> ModelFamily:
    """The family of a model folder, LoRA adapter folder or hub id, from its config's ``model_type``."""
    return family_named(model_config(name_or_path).get("model_type", "<none>"))


def demo_family(model_dir: str | Path) -> ModelFamily | None:
    """The family whose demo model is built at ``model_dir`` (``resources/demo/tiny-<family>``, or its
    pretrained form ``resources/demo/pretrained-<family>``), if any."""
    folder = str(model_dir).rstrip("/")
    return next(
        (family for family in FAMILIES.values() if folder in (family.demo_model_dir, family.demo_pretrained_dir)),
        None,
    )


def base_model(name_or_path: str | None, demo_model_family: str, pretrained: bool = False) -> tuple[str, ModelFamily]:
    """The base model every fine-tune starts from, and its family, decided before anything runs.

    ``None`` is the demo's tiny model of ``demo_model_family``: the random-weight one, or with
    ``pretrained`` (config demo.pretrain.enabled) the one trained on generic screens. A demo model
    folder's family is known from its name before the workflow builds it; any other folder or hub id is
    read (``family_of``).
    """
    if name_or_path is None:
        family = family_named(demo_model_family)
        return (family.demo_pretrained_dir if pretrained else family.demo_model_dir), family
    return name_or_path, demo_family(name_or_path) or family_of(name_or_path)
