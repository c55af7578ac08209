"""A tiny, randomly initialised vision-language model of a real family's architecture, loadable wherever
the real one is.

The demo cannot download Qwen2-VL-7B, Qwen2.5-VL-7B or Qwen3-VL-8B, so it builds the same architecture
(the family's transformers config class, ``vlmflow.model.families``) at toy size, with a byte-level BPE tokenizer
trained on the demo's own text and the family's special tokens and chat template, and saves model,
tokenizer and processor into one directory that ``AutoModelForImageTextToText``, ``AutoProcessor`` and
``llamafactory-cli train`` (with the family's template) load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from vlmflow.model.families import QWEN2_SPECIAL_TOKENS, TinySize, family_named

logger = logging.getLogger(__name__)

# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX). Using the same
# pipeline means the saved tokenizer behaves identically whichever tokenizer class loads it.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Text the tokenizer always sees besides the corpus: the chat scaffolding, so role names are one token.
_SCAFFOLD_TEXT = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "Picture 1: "]


def train_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 4000,
    special_tokens: tuple[str, ...] = QWEN2_SPECIAL_TOKENS,
    chat_template: str | None = None,
):
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
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([*_SCAFFOLD_TEXT, *corpus], trainer=trainer)
    # Qwen's instruct roles: <|im_end|> ends a turn (eos), <|endoftext|> pads; no bos, no unk.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(special_tokens[1:]),
        chat_template=chat_template,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def build_tiny_model(
    out_dir: str | Path,
    corpus: list[str],
    *,
    family: str = "qwen2_vl",
    seed: int = 0,
    text_hidden_size: int = TinySize.text_hidden_size,
    text_layers: int = TinySize.text_layers,
    vision_depth: int = TinySize.vision_depth,
    vocab_size: int = 4000,
    max_visual_tokens: int = 64,
    min_visual_tokens: int = 4,
) -> Path:
    """Build, seed and save a tiny model of ``family`` (model, tokenizer, processor) into ``out_dir``.

    One merged block of patches (28x28 pixels for Qwen2/2.5-VL, 32x32 for Qwen3-VL) becomes one visual
    token; 64 of them are enough for the demo's colours and layouts, and cheap on a CPU.
    """
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText

    model_family = family_named(family)
    if not corpus:
        raise ValueError("the tokenizer corpus is empty: pass the prompts and labels it must encode")
    if min_visual_tokens > max_visual_tokens:
        raise ValueError(f"min_visual_tokens ({min_visual_tokens}) exceeds max_visual_tokens ({max_visual_tokens})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    chat_template = model_family.chat_template
    tokenizer = train_tokenizer(corpus, vocab_size, model_family.special_tokens, chat_template)
    size = TinySize(text_hidden_size=text_hidden_size, text_layers=text_layers, vision_depth=vision_depth)
    config = model_family.tiny_config(tokenizer, size)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).to(torch.float32)
    # Generation stops at <|im_end|>, the end of an assistant turn, as in the instruct models.
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id

    # Pass `size` dicts, not min_pixels/max_pixels: the processors' __init__ writes those into
    # the class-level default `size` dict, leaking one build's setting into the next.
    pixels = model_family.pixels_per_visual_token
    image_size = {"shortest_edge": min_visual_tokens * pixels, "longest_edge": max_visual_tokens * pixels}
    processor_class, image_processor_class, video_processor_class = (
        getattr(transformers, name) for name in model_family.processor_classes
    )
    patches = {"patch_size": model_family.patch_size, "merge_size": model_family.merge_size}
    processor = processor_class(
        image_processor=image_processor_class(size=dict(image_size), **patches),
        video_processor=video_processor_class(size=dict(image_size), **patches),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )

    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "tiny %s: %d parameters, %d tokens, up to %d visual tokens per image -> %s",
        model_family.title,
        parameters,
        len(tokenizer),
        max_visual_tokens,
        out_dir,
    )
    return out_dir


def build_demo_model(out_dir: str | Path, labels_file: str | Path, *, family: str, seed: int, size: dict) -> Path:
    """The demo's tiny model of ``family`` as rule build_tiny_model builds it: its tokenizer trained on the
    prompts of ``labels_file`` and the demo's vocabulary, its dimensions config demo.model (``size``)."""
    from vlmflow.data.labels import baseline_prompt, described_prompt, load_labels
    from vlmflow.demo.dataset import demo_vocabulary

    labels = load_labels(labels_file)
    corpus = [baseline_prompt(labels), described_prompt(labels), *demo_vocabulary()]
    return build_tiny_model(out_dir, corpus, family=family, seed=seed, **size)
