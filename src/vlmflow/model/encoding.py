"""What every scoring backend shares, importing neither backend: the ``PromptEncoder`` that encodes prompts, answers
and images as LLaMA-Factory did in training (the family's template and multimodal plugin), the request types and the
``ScoringBackend`` protocol, and ``score_table``, which drives any backend over a prompt table (reason-first variants
generate the reason, then every row's labels are scored; a CUDA out-of-memory error halves the batch).
``load_model`` loads a fine-tuned folder, a LoRA adapter merged into its base model, for either backend.

The transformers backend is ``vlmflow.model.scoring`` (with the backend dispatch ``score_tables``), the vLLM backend
``vlmflow.model.vllm_backend``; both import this module.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vlmflow.model.families import ModelFamily, family_of
from vlmflow.prompting.prompts import answer_around_label
from vlmflow.prompting.variants import PromptVariant

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ANSWER_CACHE_SIZE = 64
ADAPTER_CONFIG = "adapter_config.json"  # a LoRA fine-tune saves only its adapter, beside this file

# The automatic batch size (score.batch_size null). On the CPU memory is not what limits a batch: 8 images, the
# size measured fastest there (docs/benchmarks.md) and the schema's fixed default before it was automatic.
CPU_BATCH_SIZE = 8

ImageInput = Image.Image | str | Path


def open_image(image: ImageInput) -> Image.Image:
    """The image itself; a missing file is named."""
    if isinstance(image, Image.Image):
        return image
    if not Path(image).is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    return Image.open(image)


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens all sequences start with, leaving each at least one token of its own to score."""
    shared = 0
    while shared < min(map(len, sequences)) - 1 and len({seq[shared] for seq in sequences}) == 1:
        shared += 1
    return shared


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


@dataclass
class ScoringRequest:
    """One prompt row to score: its image, its prompt (one ``<image>`` placeholder) and its system turn."""

    image: ImageInput
    prompt: str
    system: str | None = None


@dataclass
class ChatRequest:
    """A text-only chat to answer (no image), as general data trains: its turns through the last user turn."""

    messages: list[dict]
    system: str | None = None


class ScoringBackend(Protocol):
    """What ``score_table`` needs of a backend (``scoring.Scorer`` for transformers, ``vllm_backend.VllmScorer`` for
    vLLM)."""

    def score_many(
        self, requests: list[ScoringRequest], labels: list[str], answers: list[tuple[str, str]]
    ) -> np.ndarray: ...

    def generate_many(
        self, requests: list[ScoringRequest], *, answer_prefix: str, stop: str | None, max_new_tokens: int
    ) -> list[str]: ...

    def automatic_batch_size(
        self, prompts: pd.DataFrame, labels: list[str], variant: PromptVariant, reason_max_new_tokens: int | None
    ) -> int: ...


@dataclass
class PromptEncoder:
    """The family's LLaMA-Factory template and multimodal plugin around a processor: prompts and answers as
    the token ids training saw, images resized from ``processor.image_max_pixels``/``image_min_pixels``.
    Every scoring backend encodes through it, so they all score the same tokens and pixels."""

    processor: object
    tokenizer: object
    template: object  # llamafactory.data.template.Template
    family: ModelFamily
    # Label-first variants score the same answers for every image: encoding 25 of them per image cost
    # an eighth of the tiny model's scoring time.
    answer_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.eos_token_id  # the template's stop word, <|im_end|> (replace_eos)

    def regularized_image(self, image: ImageInput) -> Image.Image:
        """The image as the plugin resizes it for training (within the pixel limits, RGB)."""
        [regularized] = self.template.mm_plugin._regularize_images([open_image(image)], **self._pixel_limits())[
            "images"
        ]
        return regularized

    def _pixel_limits(self) -> dict:
        return {
            "image_max_pixels": self.processor.image_max_pixels,
            "image_min_pixels": self.processor.image_min_pixels,
        }

    def prompt_ids(self, image: ImageInput, prompt: str, system: str | None = None) -> list[int]:
        """The template's tokens up to the answer, the image placeholder expanded to its visual tokens."""
        if prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"a prompt needs exactly one {IMAGE_PLACEHOLDER} placeholder: {prompt[:80]!r}")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        messages = self.template.mm_plugin.process_messages(messages, [open_image(image)], [], [], self.processor)
        ids, _ = self.template.encode_oneturn(self.tokenizer, messages, system)
        return ids

    def chat_prompt_ids(self, request: ChatRequest) -> list[int]:
        """The template's tokens of a text-only chat up to its answer, as LLaMA-Factory encodes a general-data
        record in training (earlier turns, then the last user turn; no image, so the plugin adds nothing)."""
        if not request.messages or request.messages[-1]["role"] != "user":
            raise ValueError(f"a chat to answer must end on a user turn: {request.messages!r}")
        messages = [*request.messages, {"role": "assistant", "content": ""}]
        ids, _ = self.template.encode_oneturn(self.tokenizer, messages, request.system)
        return ids

    def image_inputs(self, image: ImageInput, ids: list[int]) -> dict:
        """The processor's tensors of one image (pixels, grid) for the prompt ``ids`` it belongs to."""
        mm_inputs = self.template.mm_plugin.get_mm_inputs(
            [open_image(image)], [], [], [1], [0], [0], [ids], self.processor
        )
        return {name: value for name, value in mm_inputs.items() if isinstance(value, torch.Tensor)}

    def answer_ids(self, labels: list[str], answer_before: str = "", answer_after: str = "") -> list[list[int]]:
        """Each label's answer tokens through the end of turn, as the template encodes the answer in training.

        Tokenizing the whole answer matters: the pre-tokenizer can glue the opening quote of the label slot
        to the label's first characters, so before and label tokenized apart would differ from training.
        The template's separator after the end of turn is the same for every label and is not scored.
        """
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct and non-empty: {labels}")
        key = (tuple(labels), answer_before, answer_after)
        if key not in self.answer_cache:
            if len(self.answer_cache) >= ANSWER_CACHE_SIZE:  # reason-first answers differ per image
                self.answer_cache.clear()
            self.answer_cache[key] = self._encode_answers(labels, answer_before, answer_after)
        return [list(ids) for ids in self.answer_cache[key]]

    def _encode_answers(self, labels: list[str], answer_before: str, answer_after: str) -> list[list[int]]:
        answers = []
        for label in labels:
            messages = [
                {"role": "user", "content": ""},
                {"role": "assistant", "content": answer_before + label + answer_after},
            ]
            _, ids = self.template.encode_oneturn(self.tokenizer, messages)
            answers.append(ids[: ids.index(self.end_of_turn_id) + 1])
        return answers

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @property
    def max_image_tokens(self) -> int:
        """Visual tokens of an image at the pixel cap: LLaMA-Factory's pre-resize, or the processor's own if lower
        (its ``longest_edge`` is a pixel count). The processor rounds each side to whole patches, which can add
        up to (width + height) / 56 tokens above this (see ``vllm_backend.MODEL_LEN_MARGIN``)."""
        cap = min(self.processor.image_max_pixels, self.processor.image_processor.size["longest_edge"])
        return cap // self.family.pixels_per_visual_token

    def max_prompt_tokens(self, prompt: str, system: str | None = None) -> int:
        """Tokens of ``prompt`` with an image at the pixel cap (``max_image_tokens``), without reading the image:
        the plugin's placeholder unexpanded (one visual token), then widened to the cap."""
        plugin = copy.copy(self.template.mm_plugin)
        plugin.expand_mm_tokens = False  # one visual token for the image, and the image left unread
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        messages = plugin.process_messages(messages, [Image.new("RGB", (32, 32))], [], [], self.processor)
        ids, _ = self.template.encode_oneturn(self.tokenizer, messages, system)
        return len(ids) - 1 + self.max_image_tokens


def load_encoder(
    model_dir: str | Path, image_max_pixels: int | None = None, image_min_pixels: int | None = None
) -> PromptEncoder:
    """The processor of ``model_dir`` with its family's LLaMA-Factory template; the pixel limits are the
    training's (``None``: LLaMA-Factory's defaults)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import AutoProcessor

    family = family_of(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    # The attributes LLaMA-Factory's loader sets on the processor, which its plugin resizes images by.
    defaults = ModelArguments.__dataclass_fields__
    processor.image_max_pixels = image_max_pixels or defaults["image_max_pixels"].default
    processor.image_min_pixels = image_min_pixels or defaults["image_min_pixels"].default
    tokenizer = processor.tokenizer
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=family.template))
    return PromptEncoder(processor, tokenizer, template, family)


def longest_sequence_tokens(
    encoder: PromptEncoder,
    prompts: pd.DataFrame,
    labels: list[str],
    variant: PromptVariant,
    reason_tokens: int | None,
) -> int:
    """Tokens of the longest sequence scoring a row of ``prompts`` can make: its prompt with an image at the pixel
    cap, the longest label's answer and, for reason-first variants, ``reason_tokens`` for the reason in it (sizes
    the transformers backend's batches and vLLM's ``max_model_len``)."""
    turns = prompts[["prompt", "system"]].drop_duplicates()  # most variants: one prompt, two system turns
    prompt = max(
        (encoder.max_prompt_tokens(row.prompt, system_of(row)) for row in turns.itertuples(index=False)), default=0
    )
    answer = max(map(len, encoder.answer_ids(labels, *answer_around_label(variant, ""))))
    return prompt + answer + (reason_budget(variant, reason_tokens) if variant.generates_reason else 0)


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A saved model, or a LoRA adapter merged into its base model (``adapter_config.json`` names it)."""
    from transformers import AutoModelForImageTextToText

    model_dir = Path(model_dir)
    if not (model_dir / ADAPTER_CONFIG).is_file():
        return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    from peft import PeftModel

    base = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    # Merged once at load: scoring then runs at the base model's speed, with no adapter layers in the way.
    return PeftModel.from_pretrained(model, model_dir).merge_and_unload()


def reason_slot(variant: PromptVariant) -> tuple[str, str]:
    """The answer text before and after the reason of a reason-first variant (the after part ends at the label)."""
    sentinel = "\ue001"  # private use: splits the answer where the reason goes
    before, _ = answer_around_label(variant, sentinel)
    head, tail = before.split(sentinel)
    return head, tail


def extract_reason(generated: str, tail: str) -> str:
    """The reason from generated JSON text, unescaped so that ``answer_around_label`` re-escapes it the same."""
    # Without the tail the token limit cut the reason: keep it up to its closing quote, if any.
    raw = generated.split(tail)[0] if tail in generated else re.split(r'(?<!\\)"', generated)[0].rstrip("\\")
    try:
        return json.loads(f'"{raw}"')
    except json.JSONDecodeError:
        return raw


def reason_budget(variant: PromptVariant, reason_max_new_tokens: int | None) -> int:
    """The reason's token budget of a reason-first variant: the caller's (score.max_new_tokens), never a default."""
    if reason_max_new_tokens is None:
        raise ValueError(
            f"variant {variant.name} generates a reason: pass reason_max_new_tokens (score.max_new_tokens)"
        )
    return reason_max_new_tokens


def score_table(
    scorer: ScoringBackend,
    prompts: pd.DataFrame,
    labels: list[str],
    variant: PromptVariant,
    *,
    reason_max_new_tokens: int | None = None,
    batch_size: int | None = None,
    log_every: int = 20,
) -> pd.DataFrame:
    """One row per prompt row: ``id``, ``p::<label>`` per label, ``predicted`` and ``generated`` (the reason).

    ``prompts`` has id, image_path, prompt and system. Reason-first variants generate the reason greedily
    (at most ``reason_max_new_tokens``, score.max_new_tokens, which they need), then score the label slot.
    ``scorer`` is a backend (``Scorer``, or vLLM's) with ``generate_many`` and ``score_many``; rows go to it
    ``batch_size`` at a time (``None``: the backend's ``automatic_batch_size``). A CUDA out-of-memory error
    halves the batch for the rest of the table and scores the same rows again: the scores do not depend on the
    batch.
    """
    if batch_size is None:
        batch_size = scorer.automatic_batch_size(prompts, labels, variant, reason_max_new_tokens)
    rows = in_batches(
        list(prompts.itertuples(index=False)),
        batch_size,
        lambda batch: score_batch(scorer, batch, labels, variant, reason_max_new_tokens),
        too_large=lambda row: (
            f"CUDA ran out of memory scoring one image ({row.image_path}): free the card of other processes, lower "
            "train.hyperparameters.image_max_pixels (training and scoring resize by it: the folds train again), or "
            "score on a card with more memory"
        ),
        doing=("scoring", "scored", "images"),
        log_every=log_every,
    )
    return pd.DataFrame(rows, columns=["id", *(f"p::{label}" for label in labels), "predicted", "generated"])


def in_batches(
    items: list,
    batch_size: int,
    run_batch: Callable[[list], list],
    *,
    too_large: Callable[[object], str],
    doing: tuple[str, str, str],
    log_every: int = 20,
) -> list:
    """``run_batch`` over ``items``, ``batch_size`` at a time, its results in order. A CUDA out-of-memory error halves
    the batch for the rest and runs the same items again, so that the results do not depend on the card (greedy
    decoding and scores are the same at any batch); at one item it raises with ``too_large(item)``, what to do.
    ``doing``: the verb, its past and the items' name, for the log (scoring, scored, images)."""
    verb, past, noun = doing
    results, started, done = [], time.monotonic(), 0
    while done < len(items):
        batch = items[done : done + batch_size]
        try:
            results += run_batch(batch)
        except torch.cuda.OutOfMemoryError as error:
            if len(batch) == 1:
                raise torch.cuda.OutOfMemoryError(too_large(batch[0])) from error
            # The failed batch's tensors go back to PyTorch's cache once the error is dropped, for the halves.
            batch_size = len(batch) // 2
            log.warning(
                "CUDA out of memory at %d %s a batch: %s them again %d at a time", len(batch), noun, verb, batch_size
            )
            continue
        previously, done = done, done + len(batch)
        if done // log_every > previously // log_every or done == len(items):
            log.info("%s %d/%d %s (%.2f %s/s)", past, done, len(items), noun, done / (time.monotonic() - started), noun)
    return results


def score_batch(
    scorer: ScoringBackend,
    batch: list,
    labels: list[str],
    variant: PromptVariant,
    reason_max_new_tokens: int | None,
) -> list[dict]:
    """The score table's rows of one batch of prompt rows: reasons first (reason-first variants), then labels."""
    requests = [ScoringRequest(row.image_path, row.prompt, system_of(row)) for row in batch]
    reasons = [""] * len(batch)
    if variant.generates_reason:
        head, tail = reason_slot(variant)
        budget = reason_budget(variant, reason_max_new_tokens)
        generated = scorer.generate_many(requests, answer_prefix=head, stop=tail, max_new_tokens=budget)
        reasons = [extract_reason(text, tail) for text in generated]
    answers = [answer_around_label(variant, reason) for reason in reasons]
    return [
        {
            "id": row.id,
            **{f"p::{label}": float(p) for label, p in zip(labels, probabilities, strict=True)},
            "predicted": labels[int(np.argmax(probabilities))],
            "generated": reason,
        }
        for row, reason, probabilities in zip(batch, reasons, scorer.score_many(requests, labels, answers), strict=True)
    ]


def system_of(row) -> str | None:
    """A prompt row's system turn; empty or missing means the template's default."""
    return row.system if isinstance(row.system, str) and row.system else None
