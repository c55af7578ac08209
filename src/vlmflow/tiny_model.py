"""A tiny, randomly initialised Qwen2-VL that loads wherever the real one does.

The demo cannot download Qwen2-VL-7B, so it builds the same architecture
(``Qwen2VLForConditionalGeneration``) at toy size, with a byte-level BPE tokenizer trained on
the demo's own text, and saves model, tokenizer and processor into one directory that
``AutoProcessor``, ``AutoTokenizer`` and ``llamafactory-cli train`` (``template: qwen2_vl``) load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

# Qwen2-VL's added tokens, in Qwen's order. The processor and LLaMA-Factory's qwen2_vl template
# refer to them by text; the model config refers to them by id, so ids are read back from the tokenizer.
SPECIAL_TOKENS = [
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
]

# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX). Using the same
# pipeline means the saved tokenizer behaves identically whichever tokenizer class loads it.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-VL-Instruct's chat template: ChatML, a default system turn, images as
# <|vision_start|><|image_pad|><|vision_end|> which the processor expands to one pad per visual token.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
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

# Text the tokenizer always sees besides the corpus: the chat scaffolding, so role names are one token.
_SCAFFOLD_TEXT = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "Picture 1: "]


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 4000):
    """Byte-level BPE on ``corpus`` with Qwen2's pre-tokenizer, wrapped as a fast tokenizer.

    Byte level means any text encodes without unknown tokens; merges learnt on the corpus give
    the labels short token sequences. The vocabulary stops short of ``vocab_size`` when the
    corpus has no more pairs to merge.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([*_SCAFFOLD_TEXT, *corpus], trainer=trainer)
    # Qwen2-VL-Instruct's roles: <|im_end|> ends a turn (eos), <|endoftext|> pads; no bos, no unk.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def tiny_qwen2_vl_config(tokenizer, *, text_hidden_size: int = 128, text_layers: int = 4, vision_depth: int = 2):
    """A ``Qwen2VLConfig`` at toy size whose token ids match ``tokenizer``."""
    from transformers import Qwen2VLConfig

    heads = max(1, text_hidden_size // 32)
    head_dim = text_hidden_size // heads
    # M-RoPE splits each head's rotary half into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden_size,
            "intermediate_size": 4 * text_hidden_size,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": 32768,
            "max_window_layers": text_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "embed_dim": 64,
            "num_heads": 4,
            "mlp_ratio": 2,
            # The merger projects visual tokens into the text stream: its output width must be the
            # text width, or the forward fails with "Image features and image tokens do not match".
            "hidden_size": text_hidden_size,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    corpus: list[str],
    *,
    seed: int = 0,
    text_hidden_size: int = 128,
    text_layers: int = 4,
    vision_depth: int = 2,
    vocab_size: int = 4000,
    max_pixels: int = 64 * 28 * 28,
    min_pixels: int = 4 * 28 * 28,
) -> Path:
    """Build, seed and save a tiny Qwen2-VL (model, tokenizer, processor) into ``out_dir``.

    One 28x28 pixel block becomes one visual token, so ``max_pixels = 64 * 28 * 28`` caps an
    image at 64 tokens: enough for the demo's colours and layouts, cheap on a CPU.
    """
    import torch
    from transformers import (
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if not corpus:
        raise ValueError("the tokenizer corpus is empty: pass the prompts and labels it must encode")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) exceeds max_pixels ({max_pixels})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(corpus, vocab_size)
    config = tiny_qwen2_vl_config(
        tokenizer, text_hidden_size=text_hidden_size, text_layers=text_layers, vision_depth=vision_depth
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    # Generation stops at <|im_end|>, the end of an assistant turn, as in Qwen2-VL-Instruct.
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id

    # Pass `size` dicts, not min_pixels/max_pixels: the processors' __init__ writes those into
    # the class-level default `size` dict, leaking one build's setting into the next.
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(size)),
        video_processor=Qwen2VLVideoProcessor(size=dict(size)),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "tiny Qwen2-VL: %d parameters, %d tokens, up to %d visual tokens per image -> %s",
        parameters,
        len(tokenizer),
        max_pixels // (28 * 28),
        out_dir,
    )
    return out_dir
