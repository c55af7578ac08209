"""Scoring that fits the card: the automatic batch size from the model's KV bytes per token and the free memory
(hand arithmetic on Qwen2-VL-7B's config), the prompt-length bound it and vLLM's max_model_len rest on, and a
CUDA out-of-memory error halving the batch without changing a score (simulated on a tiny model)."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.model.encoding import CPU_BATCH_SIZE, longest_sequence_tokens, score_table
from vlmflow.model.scoring import MAX_BATCH_SIZE, auto_batch_size, kv_bytes_per_token, load_scorer
from vlmflow.prompting.prompts import answer_around_label

from helpers.scoring_models import build_scoring_model
from helpers.variants import make_variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
LABELS = load_labels(REPO / "config" / "labels.yaml")
NAMES = label_names(LABELS)
PROMPT = baseline_prompt(LABELS)
QWEN2_VL_7B = json.loads((REPO / "tests" / "data" / "qwen2_vl_7b_config.json").read_text(encoding="utf-8"))
KIB = 1024
WEIGHTS_7B = 16.6e9  # 8.29 B parameters in bf16
TOKENS = 1300  # a MIRE screen at the 768 x 768 pixel cap (about 750 visual tokens) and the 25-label prompt


def test_kv_bytes_per_token_of_qwen2_vl_7b_is_56_kib_in_bf16() -> None:
    config = AutoConfig.for_model(**QWEN2_VL_7B)
    # 28 layers x 4 KV heads x 128 (3,584 / 28 heads) x 2 (K and V) x 2 bytes
    assert kv_bytes_per_token(config, torch.bfloat16) == 28 * 4 * 128 * 2 * 2 == 56 * KIB
    assert kv_bytes_per_token(config, torch.float32) == 112 * KIB


def test_automatic_batch_size_of_the_7b_on_a_24_and_an_80_gb_card() -> None:
    per_token = 56 * KIB
    # The old fixed batch of 8: 8 x 25 x 1,300 tokens x 56 KiB = 14.9 GB, over the 7.4 GB a 24 GB card has left.
    assert 8 * 25 * TOKENS * per_token == pytest.approx(14.9e9, rel=1e-2)
    per_image = TOKENS * per_token * 26  # the prompt's cache and its copy widened to 25 labels
    assert per_image == pytest.approx(1.938e9, rel=1e-3)
    # 24 GB: 7.4 GB free x 0.7 = 5.18 GB, 2.67 images; 80 GB: 63.4 GB x 0.7 = 44.4 GB, 22.9 images.
    assert auto_batch_size(24e9 - WEIGHTS_7B, per_token, TOKENS, 25) == 2
    assert auto_batch_size(80e9 - WEIGHTS_7B, per_token, TOKENS, 25) == 22
    assert auto_batch_size(80e9 - WEIGHTS_7B, per_token, TOKENS, 25, reserve_fraction=0.0) == 32  # 63.4 / 1.938
    # Generation alone (labels 0, the general-ability answers) holds one cache an image.
    assert auto_batch_size(24e9 - WEIGHTS_7B, per_token, 4000, 0) == 22  # 5.18 GB / 229 MB = 22.6
    # Never below one image (an out-of-memory error then says what to do), never above MAX_BATCH_SIZE.
    assert auto_batch_size(1e9, per_token, TOKENS, 25) == 1
    assert auto_batch_size(1e15, per_token, TOKENS, 25) == MAX_BATCH_SIZE


def random_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory):
    before = torch.get_num_threads()
    model_dir = build_scoring_model(tmp_path_factory.mktemp("scoring-memory") / "model", "qwen2_vl")
    yield load_scorer(model_dir, num_threads=1)
    torch.set_num_threads(before)


def test_the_prompt_bound_is_the_prompt_of_an_image_at_the_pixel_cap(scorer) -> None:
    encoder = scorer.encoder
    # The tiny model's processor caps an image at 16 visual tokens (12,544 pixels, 28 x 28 a token).
    assert encoder.max_image_tokens == 16
    at_cap = random_image(112, 112, 0)
    for system in (None, "你是电商识图助手。"):
        bound = encoder.max_prompt_tokens(PROMPT, system)
        assert len(encoder.prompt_ids(at_cap, PROMPT, system)) == bound
        for image in (random_image(1000, 900, 1), random_image(64, 300, 2), random_image(56, 56, 3)):
            assert len(encoder.prompt_ids(image, PROMPT, system)) <= bound


def test_the_longest_sequence_holds_prompt_reason_budget_and_answer(scorer, tmp_path: Path) -> None:
    path = tmp_path / "screen.png"
    random_image(112, 112, 0).save(path)
    prompts = pd.DataFrame([{"id": "a", "image_path": str(path), "prompt": PROMPT, "system": None}])
    plain, reason_first = make_variant("plain"), make_variant("reason_first", reason=True)
    encoder = scorer.encoder
    longest_answer = max(map(len, encoder.answer_ids(NAMES)))
    assert longest_sequence_tokens(encoder, prompts, NAMES, plain, None) == (
        len(encoder.prompt_ids(path, PROMPT)) + longest_answer
    )
    with_reason = max(map(len, encoder.answer_ids(NAMES, *answer_around_label(reason_first, ""))))
    assert longest_sequence_tokens(encoder, prompts, NAMES, reason_first, 90) == (
        len(encoder.prompt_ids(path, PROMPT)) + with_reason + 90
    )
    with pytest.raises(ValueError, match="reason_max_new_tokens"):
        longest_sequence_tokens(encoder, prompts, NAMES, reason_first, None)
    assert scorer.automatic_batch_size(prompts, NAMES, plain, None) == CPU_BATCH_SIZE  # on the CPU: today's 8


def prompt_rows(tmp_path: Path, count: int) -> pd.DataFrame:
    """Rows of different image sizes (so different lengths and left padding) and system turns."""
    rows = []
    for index in range(count):
        path = tmp_path / f"image{index}.png"
        random_image(64 + 48 * (index % 3), 112 - 24 * (index % 2), index).save(path)
        system = None if index % 2 == 0 else "你是电商识图助手。"
        rows.append({"id": f"r{index}", "image_path": str(path), "prompt": PROMPT, "system": system})
    return pd.DataFrame(rows)


@pytest.fixture
def small_card(scorer, monkeypatch):
    """Makes the model's forward raise CUDA's out-of-memory error past ``rows`` rows, as a card too small would:
    the forward on the widened cache (25 label rows an image) is the one that meets the limit."""
    forward = scorer.model.forward

    def limit(rows: int) -> None:
        @functools.wraps(forward)  # generate() reads the forward's signature
        def forward_within(*args, **kwargs):
            if kwargs["input_ids"].shape[0] > rows:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(*args, **kwargs)

        monkeypatch.setattr(scorer.model, "forward", forward_within)

    return limit


@pytest.mark.parametrize(
    "variant", [make_variant("plain"), make_variant("reason_first", reason=True)], ids=lambda v: v.name
)
def test_out_of_memory_halves_the_batch_and_leaves_the_scores_as_they_were(
    scorer, small_card, tmp_path: Path, caplog, variant
) -> None:
    prompts = prompt_rows(tmp_path, 5)
    settings = {"reason_max_new_tokens": 6, "batch_size": 5}
    unhalved = score_table(scorer, prompts, NAMES, variant, **settings)
    small_card(2 * len(NAMES))  # from here on, the labels of more than 2 images run out of memory
    with caplog.at_level(logging.WARNING, logger="vlmflow.model.encoding"):
        halved = score_table(scorer, prompts, NAMES, variant, **settings)
    columns = [f"p::{name}" for name in NAMES]
    assert list(halved["id"]) == list(unhalved["id"]) == [f"r{i}" for i in range(5)]
    difference = np.abs(halved[columns].to_numpy() - unhalved[columns].to_numpy()).max()
    assert difference < 1e-6
    assert list(halved["predicted"]) == list(unhalved["predicted"])
    assert list(halved["generated"]) == list(unhalved["generated"])
    # 5 images run out of memory, then 2, 2 and the last 1 fit: one halving, logged.
    halvings = [record.getMessage() for record in caplog.records if "out of memory" in record.getMessage()]
    assert halvings == ["CUDA out of memory at 5 images a batch: scoring them again 2 at a time"]


def test_out_of_memory_at_one_image_says_what_to_do(scorer, small_card, tmp_path: Path, caplog) -> None:
    prompts = prompt_rows(tmp_path, 3)
    small_card(len(NAMES) - 1)  # not even one image's labels fit
    with caplog.at_level(logging.WARNING, logger="vlmflow.model.encoding"):
        with pytest.raises(torch.cuda.OutOfMemoryError, match="scoring one image") as failure:
            score_table(scorer, prompts, NAMES, make_variant("plain"), batch_size=3)
    assert "image_max_pixels" in str(failure.value) and "image0.png" in str(failure.value)
    assert isinstance(failure.value.__cause__, torch.cuda.OutOfMemoryError)  # the card's own message kept
    halvings = [record.getMessage() for record in caplog.records if "out of memory" in record.getMessage()]
    assert halvings == [
        "CUDA out of memory at 3 images a batch: scoring them again 1 at a time",
    ]


def test_on_a_gpu_the_batch_is_what_its_free_memory_holds(scorer, tmp_path: Path, monkeypatch, caplog) -> None:
    prompts = prompt_rows(tmp_path, 2)
    variant = make_variant("plain")
    tokens = longest_sequence_tokens(scorer.encoder, prompts, NAMES, variant, None)
    per_image = kv_bytes_per_token(scorer.model.config, torch.float32) * tokens * (len(NAMES) + 1)
    free = int(3.5 * per_image / 0.7)  # room for 3.5 images' caches once 30% is kept back
    monkeypatch.setattr(type(scorer), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
    with caplog.at_level(logging.INFO, logger="vlmflow.model.scoring"):
        assert scorer.automatic_batch_size(prompts, NAMES, variant, None) == 3
    assert f"{tokens} tokens at most, 25 labels" in caplog.text
