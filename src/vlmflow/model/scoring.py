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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vlmflow.model.families import ModelFamily, family_of
from vlmflow.prompting.prompts import answer_around_label
from vlmflow.prompting.variants import PromptVariant

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ADAPTER_CONFIG = "adapter_config.json"  # a LoRA fine-tune saves only its adapter, beside this file

ImageInput = Image.Image | str | Path


def open_image(image: ImageInput) -> Image.Image:
    """The image itself; a missing file is named."""
    if isinstance(image, Image.Image):
        return image
    if not Path(image).is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    return Image.open(image)


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
    """A model in eval mode with its processor and LLaMA-Factory template; images are resized by the
    template's plugin from ``processor.image_max_pixels``/``image_min_pixels``, as in training."""

    model: torch.nn.Module
    processor: object
    tokenizer: object
    template: object  # llamafactory.data.template.Template
    family: ModelFamily

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.eos_token_id  # the template's stop word, <|im_end|> (replace_eos)

    def prompt_ids(self, image: Image.Image, prompt: str, system: str | None = None) -> list[int]:
        """The template's tokens up to the answer, the image placeholder expanded to its visual tokens."""
        if prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"a prompt needs exactly one {IMAGE_PLACEHOLDER} placeholder: {prompt[:80]!r}")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        messages = self.template.mm_plugin.process_messages(messages, [image], [], [], self.processor)
        ids, _ = self.template.encode_oneturn(self.tokenizer, messages, system)
        return ids

    def encode_prompt(
        self, image: ImageInput, prompt: str, system: str | None = None, extra_ids: list[int] | None = None
    ) -> dict:
        """Model inputs (ids, pixels, grid, ``mm_token_type_ids``) with ``extra_ids`` appended as text."""
        image = open_image(image)
        ids = self.prompt_ids(image, prompt, system) + list(extra_ids or [])
        mm_inputs = self.template.mm_plugin.get_mm_inputs([image], [], [], [1], [0], [0], [ids], self.processor)
        input_ids = torch.tensor([ids])
        # Image tokens are type 1, text 0, as LLaMA-Factory's collator marks them for M-RoPE.
        mm_token_type_ids = (input_ids == self.model.config.image_token_id).long()
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": mm_token_type_ids,
            **{name: value for name, value in mm_inputs.items() if isinstance(value, torch.Tensor)},
        }
        return {name: value.to(self.device) for name, value in inputs.items()}

    def answer_ids(self, labels: list[str], answer_before: str = "", answer_after: str = "") -> list[list[int]]:
        """Each label's answer tokens through the end of turn, as the template encodes the answer in training.

        Tokenizing the whole answer matters: the pre-tokenizer can glue the opening quote of the label slot
        to the label's first characters, so before and label tokenized apart would differ from training.
        The template's separator after the end of turn is the same for every label and is not scored.
        """
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct and non-empty: {labels}")
        answers = []
        for label in labels:
            messages = [
                {"role": "user", "content": ""},
                {"role": "assistant", "content": answer_before + label + answer_after},
            ]
            _, ids = self.template.encode_oneturn(self.tokenizer, messages)
            answers.append(ids[: ids.index(self.end_of_turn_id) + 1])
        return answers

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
    def continuation_positions(prefix_positions: torch.Tensor, batch: int, width: int) -> torch.Tensor:
        """Positions (3, batch, width) of text tokens appended to an encoded prefix: after the image, text
        positions run on from the prefix's largest position, equal on all three M-RoPE axes."""
        start = prefix_positions.max() + 1
        return (start + torch.arange(width, device=prefix_positions.device)).expand(3, batch, width)

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
        positions = self.positions(inputs)
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
        continuation_positions = self.continuation_positions(positions, batch, width)
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
    """Load model, processor and the family's LLaMA-Factory template; float32 on the CPU and bfloat16
    elsewhere unless ``dtype``. The pixel limits are the training's (``None``: LLaMA-Factory's defaults).

    ``device="auto"`` takes the GPU when there is one.
    """
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import AutoProcessor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if num_threads:
        torch.set_num_threads(num_threads)
    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
    family = family_of(model_dir)
    model = load_model(model_dir, dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    # The attributes LLaMA-Factory's loader sets on the processor, which its plugin resizes images by.
    defaults = ModelArguments.__dataclass_fields__
    processor.image_max_pixels = image_max_pixels or defaults["image_max_pixels"].default
    processor.image_min_pixels = image_min_pixels or defaults["image_min_pixels"].default
    tokenizer = processor.tokenizer
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=family.template))
    return Scorer(model, processor, tokenizer, template, family)


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
    generate_reason = variant.generates_reason
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


def score_tables(
    model_dir: str | Path,
    tables: list[pd.DataFrame],
    labels: list[str],
    variant: PromptVariant,
    *,
    device: str = "auto",
    threads: int | None = None,
    image_pixels: dict | None = None,
    reason_max_new_tokens: int = 90,
) -> Iterator[pd.DataFrame]:
    """Load the model once and score each prompt table in turn (``score_table``), yielding each as it is
    done, so a caller can write one before the next is scored; ``image_pixels`` are the training's
    ``image_max_pixels``/``image_min_pixels``."""
    scorer = load_scorer(model_dir, device=device, num_threads=threads, **(image_pixels or {}))
    for table in tables:
        yield score_table(scorer, table, labels, variant, reason_max_new_tokens=reason_max_new_tokens)


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
