"""Label probabilities from a fine-tuned Qwen2-VL: every candidate label scored whole, the image encoded once.

A label's score is the summed log-probability of its whole answer token sequence, end-of-turn included,
in exactly the token layout LLaMA-Factory's ``qwen2_vl`` template trained on; a softmax over the labels
turns the scores into probabilities. Labels share prefixes (物流页面-…, 退款/退货/换货), so the first token
alone would not tell them apart. The prompt and image run through the model once; all labels then run
as one right-padded batch on top of the prompt's KV cache.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vlmflow.prompts import PromptVariant, answer_around_label

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
VISION_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"  # the processor expands the pad per visual token
DEFAULT_SYSTEM = "You are a helpful assistant."  # LLaMA-Factory's qwen2_vl default_system
END_OF_TURN = "<|im_end|>"

ImageInput = Image.Image | str | Path


def load_image(image: ImageInput, max_pixels: int, min_pixels: int) -> Image.Image:
    """Open and resize an image as LLaMA-Factory's Qwen2-VL plugin does before the image processor.

    The plugin shrinks images to ``image_max_pixels`` (default 768 * 768) first; without the same step a
    large image would reach the model at a different resolution than in training.
    """
    if not isinstance(image, Image.Image):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
        image = Image.open(image)
    for limit, applies in (
        (max_pixels, image.width * image.height > max_pixels),
        (min_pixels, image.width * image.height < min_pixels),
    ):
        if applies:
            factor = (limit / (image.width * image.height)) ** 0.5
            image = image.resize((int(image.width * factor), int(image.height * factor)))
    image = image.convert("RGB") if image.mode != "RGB" else image
    if min(image.width, image.height) < 28:
        image = image.resize((max(image.width, 28), max(image.height, 28)))
    if image.width / image.height > 200:
        image = image.resize((image.height * 180, image.height))
    if image.height / image.width > 200:
        image = image.resize((image.width, image.width * 180))
    return image


def prompt_text(prompt: str, system: str | None = None) -> str:
    """The ChatML text of LLaMA-Factory's qwen2_vl template up to the assistant's answer."""
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"a prompt needs exactly one {IMAGE_PLACEHOLDER} placeholder: {prompt[:80]!r}")
    user = prompt.replace(IMAGE_PLACEHOLDER, VISION_SLOT)
    # The template falls back to its default system prompt for None and for "" alike.
    return (
        f"<|im_start|>system\n{system or DEFAULT_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def _shared_length(sequences: list[list[int]]) -> int:
    """Tokens all sequences start with, leaving each at least one token of its own to score."""
    shared = 0
    while shared < min(map(len, sequences)) - 1 and len({seq[shared] for seq in sequences}) == 1:
        shared += 1
    return shared


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


@dataclass
class Scorer:
    """A Qwen2-VL in eval mode with its processor; images are resized as LLaMA-Factory's training did."""

    model: torch.nn.Module
    processor: object
    tokenizer: object
    end_of_turn_id: int
    image_max_pixels: int = 768 * 768
    image_min_pixels: int = 32 * 32

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompt(
        self, image: ImageInput, prompt: str, system: str | None = None, extra_ids: list[int] | None = None
    ) -> dict:
        """Processor inputs (ids, image, ``mm_token_type_ids``) with ``extra_ids`` appended as text."""
        image = load_image(image, self.image_max_pixels, self.image_min_pixels)
        inputs = self.processor(text=[prompt_text(prompt, system)], images=[image], return_tensors="pt")
        if extra_ids:
            extra = torch.tensor([list(extra_ids)])
            inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
            # Appended answer tokens are text (type 0): M-RoPE gives them 1-D positions after the image.
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
        return {name: value.to(self.device) for name, value in inputs.items()}

    def answer_ids(self, labels: list[str], answer_before: str = "", answer_after: str = "") -> list[list[int]]:
        """Each label's answer tokens through <|im_end|>, tokenized as one string as LLaMA-Factory does.

        Tokenizing the whole answer matters: the pre-tokenizer can glue the opening quote of the label slot
        to the label's first characters, so before and label tokenized apart would differ from training.
        """
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct and non-empty: {labels}")
        texts = [f"{answer_before}{label}{answer_after}{END_OF_TURN}" for label in labels]
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    @torch.inference_mode()
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
        """Probability of each label: prompt + image + shared answer tokens once, then all labels in one batch."""
        answers = self.answer_ids(labels, answer_before, answer_after)
        shared = _shared_length(answers)
        inputs = self.encode_prompt(image, prompt, system, answers[0][:shared])
        # Explicit M-RoPE positions: the model's own path keeps rope_deltas as state between calls.
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
        )
        prefix = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        first_logprobs = torch.log_softmax(prefix.logits[0, -1].float(), dim=-1)

        continuations = [answer[shared:] for answer in answers]
        batch, width, prefix_length = len(continuations), max(map(len, continuations)), positions.shape[-1]
        lengths = torch.tensor([len(tokens) for tokens in continuations], device=self.device)
        ids = torch.full((batch, width), self.end_of_turn_id, device=self.device)
        for row, tokens in enumerate(continuations):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=self.device)
        valid = torch.arange(width, device=self.device)[None] < lengths[:, None]
        mask = torch.cat([torch.ones(batch, prefix_length, dtype=torch.long, device=self.device), valid.long()], 1)
        # After the image, text positions run on from the prefix's largest position (all three M-RoPE axes).
        start = positions.max() + 1
        continuation_positions = (start + torch.arange(width, device=self.device)).expand(3, batch, width)
        cache = copy.deepcopy(prefix.past_key_values)  # the copy is widened; the prefix's cache stays intact
        cache.batch_repeat_interleave(batch)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=continuation_positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        # Token t is predicted at position t - 1; the first token by the prefix's last position.
        predictors = torch.cat([first_logprobs.expand(batch, 1, -1), logprobs[:, :-1]], dim=1)
        token_logprobs = predictors.gather(-1, ids[..., None]).squeeze(-1)
        scores = torch.where(valid, token_logprobs, 0.0).sum(dim=1)
        return _softmax(scores.cpu().numpy())

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
        return _softmax(np.array(scores))

    @torch.inference_mode()
    def generate(
        self,
        image: ImageInput,
        prompt: str,
        *,
        system: str | None = None,
        max_new_tokens: int = 100,
        min_new_tokens: int = 0,
        answer_prefix: str = "",
        stop: str | None = None,
    ) -> str:
        """Greedy continuation of the answer after ``answer_prefix``; stops at <|im_end|> or at ``stop``."""
        prefix_ids = self.tokenizer(answer_prefix, add_special_tokens=False)["input_ids"] if answer_prefix else []
        inputs = self.encode_prompt(image, prompt, system, prefix_ids)
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
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def load_scorer(
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    num_threads: int | None = None,
    image_max_pixels: int = 768 * 768,
    image_min_pixels: int = 32 * 32,
) -> Scorer:
    """Load model, processor and tokenizer; float32 on the CPU and bfloat16 elsewhere unless ``dtype``.

    ``device="auto"`` takes the GPU when there is one.
    """
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if num_threads:
        torch.set_num_threads(num_threads)
    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return Scorer(model, processor, tokenizer, end_of_turn_id, image_max_pixels, image_min_pixels)


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


def score_table(
    scorer: Scorer,
    prompts: pd.DataFrame,
    labels: list[str],
    variant: PromptVariant,
    *,
    reason_max_new_tokens: int = 90,
    log_every: int = 20,
) -> pd.DataFrame:
    """One row per prompt row: ``id``, ``p::<label>`` per label, ``predicted`` and ``generated`` (the reason).

    ``prompts`` has id, image_path, prompt and system. Reason-first variants generate the reason greedily
    (at most ``reason_max_new_tokens``, within the task's 100 output tokens), then score the label slot.
    """
    generate_reason = variant.reason and variant.reason_first
    head, tail = reason_slot(variant) if generate_reason else ("", "")
    rows, started = [], time.monotonic()
    for done, row in enumerate(prompts.itertuples(index=False), start=1):
        system = row.system if isinstance(row.system, str) and row.system else None
        reason = ""
        if generate_reason:
            generated = scorer.generate(
                row.image_path,
                row.prompt,
                system=system,
                answer_prefix=head,
                max_new_tokens=reason_max_new_tokens,
                stop=tail,
            )
            reason = extract_reason(generated, tail)
            before, after = answer_around_label(variant, reason)
        else:
            before, after = answer_around_label(variant)
        probabilities = scorer.score_labels(
            row.image_path, row.prompt, labels, system=system, answer_before=before, answer_after=after
        )
        rows.append(
            {
                "id": row.id,
                **{f"p::{label}": float(p) for label, p in zip(labels, probabilities, strict=True)},
                "predicted": labels[int(np.argmax(probabilities))],
                "generated": reason,
            }
        )
        if done % log_every == 0 or done == len(prompts):
            log.info("scored %d/%d images (%.2f images/s)", done, len(prompts), done / (time.monotonic() - started))
    return pd.DataFrame(rows, columns=["id", *(f"p::{label}" for label in labels), "predicted", "generated"])
