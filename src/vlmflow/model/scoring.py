"""Label probabilities from a fine-tuned vision-language model: every candidate label scored whole, the image
encoded once.

A label's score is the summed log-probability of its whole answer token sequence, end-of-turn included,
in exactly the token layout LLaMA-Factory trained on: prompt and answer are encoded by the family's
LLaMA-Factory template and its multimodal plugin (image resizing and visual-token expansion), and M-RoPE
positions come from the model's own ``get_rope_index``, as in LLaMA-Factory's collator. A softmax over
the labels turns the scores into probabilities. Labels share prefixes (物流页面-…, 退款/退货/换货), so the
first token alone would not tell them apart. The prompt and image run through the model once; all labels
then run as one right-padded batch on top of the prompt's KV cache.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Iterator
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
# On a GPU the batch is what the free memory holds of its KV cache, less this share for what the estimate leaves
# out: the continuation's logits (25 labels x about 8 tokens x 152k words, in bf16, float32 and log-softmax: a
# sixth of a 7B's KV cache an image), the layers' activations (another tenth) and the allocator's fragmentation.
RESERVE_FRACTION = 0.3
# No measured gain past it (64 images a batch scored slower than 8 on the CPU), while a lost batch costs more.
MAX_BATCH_SIZE = 64

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


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in a model of transformers ``config``: layers x KV heads x head width x
    2 (K and V) x bytes per element. Qwen2-VL-7B in bf16: 28 x 4 x 128 x 2 x 2 = 56 KiB."""
    text = config.get_text_config()  # the language model's; these families keep it in text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers * text.num_key_value_heads * head_dim * 2 * dtype.itemsize


def auto_batch_size(
    free_bytes: int,
    kv_bytes_per_token: int,
    prompt_tokens: int,
    labels: int,
    reserve_fraction: float = RESERVE_FRACTION,
) -> int:
    """Images per batch whose KV cache fits in ``free_bytes`` (at least 1, at most ``MAX_BATCH_SIZE``).

    Scoring holds each image's prompt cache (``prompt_tokens`` long) once and its copy widened to one row per
    label (``Scorer.score_many``): ``labels + 1`` copies an image. ``labels`` 0 is generation alone.
    """
    per_image = kv_bytes_per_token * prompt_tokens * (labels + 1)
    fits = int(free_bytes * (1 - reserve_fraction)) // per_image
    return max(1, min(MAX_BATCH_SIZE, fits))


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
    """What ``score_table`` needs of a backend (``Scorer`` here, ``vllm_backend.VllmScorer`` for vLLM)."""

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


@dataclass
class Scorer:
    """The transformers backend: a model in eval mode and its ``PromptEncoder``. Requests run in batches,
    left-padded, each row with its own M-RoPE positions."""

    model: torch.nn.Module
    encoder: PromptEncoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def end_of_turn_id(self) -> int:
        return self.encoder.end_of_turn_id

    def answer_ids(self, labels: list[str], answer_before: str = "", answer_after: str = "") -> list[list[int]]:
        return self.encoder.answer_ids(labels, answer_before, answer_after)

    def automatic_batch_size(
        self, prompts: pd.DataFrame, labels: list[str], variant: PromptVariant, reason_max_new_tokens: int | None
    ) -> int:
        """Images per batch for ``score_table`` (score.batch_size null): ``CPU_BATCH_SIZE`` on the CPU; on a GPU,
        what its free memory holds of the KV cache of the longest sequence (``auto_batch_size``)."""
        if self.device.type != "cuda":
            return CPU_BATCH_SIZE
        # A reason counted at its budget: a trained model's reason encodes again to about the tokens it took, and
        # a batch that does not fit is halved (score_table).
        tokens = longest_sequence_tokens(self.encoder, prompts, labels, variant, reason_max_new_tokens)
        return self.batch_size_for(tokens, len(labels))

    def batch_size_for(self, tokens: int, labels: int) -> int:
        """Images (or chats) per batch of ``tokens`` each, widened to ``labels`` rows (0: generation alone) on the
        prompt's cache: ``CPU_BATCH_SIZE`` on the CPU, else what the GPU's free memory holds."""
        if self.device.type != "cuda":
            return CPU_BATCH_SIZE
        free, _ = torch.cuda.mem_get_info(self.device)
        per_token = kv_bytes_per_token(self.model.config, self.model.dtype)
        size = auto_batch_size(free, per_token, tokens, labels)
        log.info(
            "batch size %d: %.1f GB free on %s, %d KiB of KV cache a token, %d tokens at most, %d labels",
            size,
            free / 1e9,
            self.device,
            per_token // 1024,
            tokens,
            labels,
        )
        return size

    def encode_prompt(
        self, image: ImageInput, prompt: str, system: str | None = None, extra_ids: list[int] | None = None
    ) -> dict:
        """Model inputs (ids, pixels, grid, ``mm_token_type_ids``) with ``extra_ids`` appended as text."""
        return self.encode_batch([ScoringRequest(image, prompt, system)], [list(extra_ids or [])])

    def encode_batch(self, requests: list[ScoringRequest], extra_ids: list[list[int]]) -> dict:
        """Model inputs of several requests, each with its ``extra_ids`` appended, left-padded to one length
        (the last position of every row is its own last token)."""
        rows, images = [], []
        for request, extra in zip(requests, extra_ids, strict=True):
            image = open_image(request.image)
            ids = self.encoder.prompt_ids(image, request.prompt, request.system) + list(extra)
            rows.append(ids)
            images.append(self.encoder.image_inputs(image, ids))
        input_ids, attention_mask = self.left_padded(rows)
        # Image tokens are type 1, text 0, as LLaMA-Factory's collator marks them for M-RoPE.
        mm_token_type_ids = (input_ids == self.model.config.image_token_id).long()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids}
        for name in images[0]:  # one image per row: the processor's rows (patches, grids) stack in order
            inputs[name] = torch.cat([image[name] for image in images])
        return {name: value.to(self.device) for name, value in inputs.items()}

    def left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows as one left-padded batch and its attention mask (the last position of every row is its own
        last token)."""
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_of_turn_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return input_ids, attention_mask

    def encode_chats(self, requests: list[ChatRequest]) -> dict:
        """Model inputs of several text-only chats, left-padded to one length (no pixels: every token is text)."""
        rows = [self.encoder.chat_prompt_ids(request) for request in requests]
        input_ids, attention_mask = self.left_padded(rows)
        text_only = torch.zeros_like(input_ids)  # every token is text (type 0) for M-RoPE
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": text_only}
        return {name: value.to(self.device) for name, value in inputs.items()}

    def positions(self, inputs: dict) -> torch.Tensor:
        """M-RoPE position ids (3, batch, length) of encoded inputs, from the model's own rope index."""
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        return positions

    @staticmethod
    def continuation_positions(prefix_positions: torch.Tensor, repeats: int, width: int) -> torch.Tensor:
        """Positions (3, rows * repeats, width) of text tokens appended ``repeats`` times to each row of an
        encoded prefix: after the image, text positions run on from the row's largest position, equal on all
        three M-RoPE axes."""
        start = prefix_positions.amax(dim=(0, 2)) + 1  # per row; padding positions are 1, below every start
        steps = torch.arange(width, device=prefix_positions.device)
        per_row = start.repeat_interleave(repeats)[:, None] + steps[None]
        return per_row.expand(3, -1, -1)

    def score_labels(
        self,
        image: ImageInput,
        prompt: str,
        labels: list[str],
        *,
        system: str | None = None,
        answer_before: str = "",
        answer_after: str = "",
    ) -> np.ndarray:
        """Probability of each label for one image (``score_many`` of one request)."""
        return self.score_many([ScoringRequest(image, prompt, system)], labels, [(answer_before, answer_after)])[0]

    @torch.inference_mode()
    def score_many(
        self, requests: list[ScoringRequest], labels: list[str], answers: list[tuple[str, str]]
    ) -> np.ndarray:
        """Probabilities (requests x labels): each request's prompt, image and the answer tokens its labels
        share run once, as one left-padded batch; then every (request, label) continuation runs as one
        right-padded batch on top of the prompts' KV cache."""
        answer_ids = [self.answer_ids(labels, before, after) for before, after in answers]
        shared = [shared_prefix_length(ids) for ids in answer_ids]
        inputs = self.encode_batch(requests, [ids[0][:length] for ids, length in zip(answer_ids, shared, strict=True)])
        # Explicit M-RoPE positions: the model's own path keeps rope_deltas as state between calls.
        positions = self.positions(inputs)
        prefix = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        first_logprobs = torch.log_softmax(prefix.logits[:, -1].float(), dim=-1)  # (requests, vocab)

        continuations = [
            answer[length:]
            for label_answers, length in zip(answer_ids, shared, strict=True)
            for answer in label_answers
        ]
        count = len(labels)
        rows, width = len(continuations), max(map(len, continuations))
        lengths = torch.tensor([len(tokens) for tokens in continuations], device=self.device)
        ids = torch.full((rows, width), self.end_of_turn_id, device=self.device)
        for row, tokens in enumerate(continuations):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=self.device)
        valid = torch.arange(width, device=self.device)[None] < lengths[:, None]
        mask = torch.cat([inputs["attention_mask"].repeat_interleave(count, dim=0), valid.long()], 1)
        cache = copy.deepcopy(prefix.past_key_values)  # the copy is widened; the prefix's cache stays intact
        cache.batch_repeat_interleave(count)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=self.continuation_positions(positions, count, width),
            past_key_values=cache,
            use_cache=True,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        # Token t is predicted at position t - 1; the first token by the prefix's last position.
        first = first_logprobs.repeat_interleave(count, dim=0)[:, None]
        predictors = torch.cat([first, logprobs[:, :-1]], dim=1)
        token_logprobs = predictors.gather(-1, ids[..., None]).squeeze(-1)
        scores = torch.where(valid, token_logprobs, 0.0).sum(dim=1).view(len(requests), count)
        return np.stack([softmax(row) for row in scores.cpu().numpy()])

    @torch.inference_mode()
    def score_labels_naive(
        self,
        image: ImageInput,
        prompt: str,
        labels: list[str],
        *,
        system: str | None = None,
        answer_before: str = "",
        answer_after: str = "",
    ) -> np.ndarray:
        """Reference: one full forward per label, positions left to the model. Slow; for tests and benchmarks."""
        scores = []
        for answer in self.answer_ids(labels, answer_before, answer_after):
            inputs = self.encode_prompt(image, prompt, system, answer)
            logits = self.model(**inputs, use_cache=False).logits[0, -len(answer) - 1 : -1]
            target = torch.tensor(answer, device=self.device)[:, None]
            scores.append(torch.log_softmax(logits.float(), dim=-1).gather(-1, target).sum().item())
        return softmax(np.array(scores))

    def generate(
        self,
        image: ImageInput,
        prompt: str,
        *,
        system: str | None = None,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        answer_prefix: str = "",
        stop: str | None = None,
    ) -> str:
        """Greedy continuation of one image's answer (``generate_many`` of one request)."""
        [text] = self.generate_many(
            [ScoringRequest(image, prompt, system)],
            answer_prefix=answer_prefix,
            stop=stop,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
        )
        return text

    @torch.inference_mode()
    def generate_many(
        self,
        requests: list[ScoringRequest],
        *,
        answer_prefix: str = "",
        stop: str | None = None,
        max_new_tokens: int,
        min_new_tokens: int = 0,
    ) -> list[str]:
        """Greedy continuation of each request's answer after ``answer_prefix``, as one left-padded batch;
        a row stops at <|im_end|> or once its text ends with ``stop`` (kept in the text)."""
        prefix_ids = self.encoder.text_ids(answer_prefix)
        inputs = self.encode_batch(requests, [prefix_ids] * len(requests))
        return self._greedy(inputs, stop=stop, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)

    @torch.inference_mode()
    def generate_chats(self, requests: list[ChatRequest], *, max_new_tokens: int) -> list[str]:
        """Greedy answer of each text-only chat, as one left-padded batch; a row stops at <|im_end|>."""
        return self._greedy(self.encode_chats(requests), stop=None, max_new_tokens=max_new_tokens, min_new_tokens=0)

    def _greedy(self, inputs: dict, *, stop: str | None, max_new_tokens: int, min_new_tokens: int) -> list[str]:
        stopping = {"stop_strings": [stop], "tokenizer": self.tokenizer} if stop else {}
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            **stopping,  # Qwen's generation_config sets sampling knobs
        )
        generated = output[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)


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


def load_scorer(
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    num_threads: int | None = None,
    image_max_pixels: int | None = None,
    image_min_pixels: int | None = None,
) -> Scorer:
    """Load model and ``PromptEncoder``; float32 on the CPU and bfloat16 elsewhere unless ``dtype``. The
    pixel limits are the training's (``None``: LLaMA-Factory's defaults).

    ``device="auto"`` takes the GPU when there is one.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if num_threads:
        torch.set_num_threads(num_threads)
    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
    model = load_model(model_dir, dtype).to(device).eval()
    return Scorer(model, load_encoder(model_dir, image_max_pixels, image_min_pixels))


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
    rows, started, done = [], time.monotonic(), 0
    while done < len(prompts):
        batch = list(prompts.iloc[done : done + batch_size].itertuples(index=False))
        try:
            rows += score_batch(scorer, batch, labels, variant, reason_max_new_tokens)
        except torch.cuda.OutOfMemoryError as error:
            if len(batch) == 1:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA ran out of memory scoring one image ({batch[0].image_path}): free the card of other "
                    "processes, lower train.hyperparameters.image_max_pixels (training and scoring resize by it: the "
                    "folds train again), or score on a card with more memory"
                ) from error
            # The failed batch's tensors go back to PyTorch's cache once the error is dropped, for the halves.
            batch_size = len(batch) // 2
            log.warning(
                "CUDA out of memory at %d images a batch: scoring them again %d at a time", len(batch), batch_size
            )
            continue
        previously, done = done, done + len(batch)
        if done // log_every > previously // log_every or done == len(prompts):
            log.info("scored %d/%d images (%.2f images/s)", done, len(prompts), done / (time.monotonic() - started))
    return pd.DataFrame(rows, columns=["id", *(f"p::{label}" for label in labels), "predicted", "generated"])


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


def score_tables(
    model_dir: str | Path,
    tables: list[pd.DataFrame],
    labels: list[str],
    variant: PromptVariant,
    *,
    device: str = "auto",
    threads: int | None = None,
    image_pixels: dict | None = None,
    reason_max_new_tokens: int,
    batch_size: int | None,
    backend: str = "transformers",
    vllm_python: str | Path = ".venv-vllm/bin/python",
) -> Iterator[pd.DataFrame]:
    """Load the model once and score each prompt table in turn (``score_table``), yielding each as it is
    done, so a caller can write one before the next is scored; ``image_pixels`` are the training's
    ``image_max_pixels``/``image_min_pixels``. ``reason_max_new_tokens`` and ``batch_size`` are score.max_new_tokens
    and score.batch_size (``None``: automatic), from the caller: the schema holds their defaults. Backend ``vllm``
    scores in the vLLM venv's ``vllm_python``."""
    settings = dict(reason_max_new_tokens=reason_max_new_tokens, batch_size=batch_size)
    if backend == "vllm":
        from vlmflow.model.vllm_backend import score_tables_in_vllm_venv

        yield from score_tables_in_vllm_venv(
            model_dir,
            tables,
            labels,
            variant,
            python=vllm_python,
            image_pixels=image_pixels or {},
            device=device,
            **settings,
        )
        return
    if backend != "transformers":
        raise ValueError(f"score.backend {backend!r}: use transformers or vllm")
    scorer = load_scorer(model_dir, device=device, num_threads=threads, **(image_pixels or {}))
    for table in tables:
        yield score_table(scorer, table, labels, variant, **settings)


def shard_of_test_records(prompts: pd.DataFrame, shard: int, shards: int) -> pd.DataFrame:
    """Shard ``shard`` of ``shards`` of the test rows: every ``shards``-th row from the ``shard``-th, so the
    shards are the same size to one row and fixed by the prompt table's order (score.shards)."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"test shard {shard} of {shards}: need shards >= 1 and 0 <= shard < shards")
    return prompts[prompts["split"] == "test"].iloc[shard::shards]


def merge_test_shards(tables: list[pd.DataFrame], prompts: pd.DataFrame) -> pd.DataFrame:
    """The shards' score tables as one, in the prompt table's test order; every test record exactly once."""
    merged = pd.concat(tables, ignore_index=True)
    expected = prompts.loc[prompts["split"] == "test", "id"]
    repeated = merged["id"][merged["id"].duplicated()]
    missing = set(expected) - set(merged["id"])
    if len(repeated) or missing or len(merged) != len(expected):
        raise ValueError(
            f"the test shards do not cover the test set once: missing {sorted(missing)[:10]}, "
            f"repeated {sorted(set(repeated))[:10]}, {len(merged)} rows for {len(expected)} test records"
        )
    return merged.set_index("id").loc[expected].reset_index()
