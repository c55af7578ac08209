"""Label probabilities from a fine-tuned vision-language model: every candidate label scored whole, the image
encoded once.

A label's score is the summed log-probability of its whole answer token sequence, end-of-turn included,
in exactly the token layout LLaMA-Factory trained on: prompt and answer are encoded by the family's
LLaMA-Factory template and its multimodal plugin (image resizing and visual-token expansion), and M-RoPE
positions come from the model's own ``get_rope_index``, as in LLaMA-Factory's collator. A softmax over
the labels turns the scores into probabilities. Labels share prefixes (物流页面-…, 退款/退货/换货), so the
first token alone would not tell them apart. The prompt and image run through the model once; all labels
then run as one right-padded batch on top of the prompt's KV cache.

Here: that transformers backend (``Scorer``, ``load_scorer``, its automatic batch size), the backend dispatch
``score_tables`` and the test shards. The encoder, the request types and the table driver ``score_table``, which
the vLLM backend shares, live in ``vlmflow.model.encoding``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlmflow.model.encoding import (
    CPU_BATCH_SIZE,
    ChatRequest,
    ImageInput,
    PromptEncoder,
    ScoringRequest,
    load_encoder,
    load_model,
    longest_sequence_tokens,
    open_image,
    score_table,
    shared_prefix_length,
    softmax,
)
from vlmflow.prompting.variants import PromptVariant

log = logging.getLogger(__name__)

# The automatic batch size on a GPU (on the CPU: CPU_BATCH_SIZE) is what the free memory holds of its KV cache,
# less this share for what the estimate leaves out: the continuation's logits (25 labels x about 8 tokens x 152k
# words, in bf16, float32 and log-softmax: a sixth of a 7B's KV cache an image), the layers' activations (another
# tenth) and the allocator's fragmentation.
RESERVE_FRACTION = 0.3
# No measured gain past it (64 images a batch scored slower than 8 on the CPU), while a lost batch costs more.
MAX_BATCH_SIZE = 64


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
