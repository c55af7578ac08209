"""Label scoring: probabilities over whole label sequences, prefix-shared scoring equal to the naive one, and
the token and position layout of LLaMA-Factory's training, for every supported model family."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.model.encoding import extract_reason, reason_slot, score_table
from vlmflow.model.families import FAMILIES
from vlmflow.model.scoring import load_scorer, merge_test_shards, shard_of_test_records
from vlmflow.prompting.prompts import answer_around_label, write_llamafactory_dataset

from helpers.scoring_models import build_scoring_model, overfit_through_llamafactory
from helpers.variants import make_variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
LABELS = load_labels(REPO / "config" / "labels.yaml")
NAMES = label_names(LABELS)
PROMPT = baseline_prompt(LABELS)
REASON_BEFORE, REASON_AFTER = answer_around_label(make_variant("r", reason=True), "图中有物流轨迹")


def random_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=list(FAMILIES))
def model_dir(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scoring_model(tmp_path_factory.mktemp(f"scoring-{request.param}") / "model", request.param)


@pytest.fixture(scope="module")
def one_thread():
    # Two shared cores: a second torch thread spins against other processes and slows tiny forwards ~50x.
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scorer(model_dir: Path, one_thread: int):
    return load_scorer(model_dir, num_threads=one_thread)


@pytest.fixture(scope="module")
def peaked_scorer(model_dir: Path, one_thread: int):
    # A random model spreads ~1/25 on every label, so probability differences hide position errors;
    # larger output weights make the distribution peaked and those errors visible.
    peaked = load_scorer(model_dir, num_threads=one_thread)
    with torch.no_grad():
        peaked.model.lm_head.weight.mul_(20.0)
    return peaked


def test_probabilities_are_one_per_label_positive_and_sum_to_one(scorer) -> None:
    probabilities = scorer.score_labels(random_image(64, 112, 0), PROMPT, NAMES)
    assert probabilities.shape == (len(NAMES),)
    assert abs(probabilities.sum() - 1.0) < 1e-6
    assert (probabilities > 0).all()


@pytest.mark.parametrize("before, after", [("", ""), (REASON_BEFORE, REASON_AFTER)], ids=["plain", "reason"])
def test_prefix_shared_scoring_equals_one_forward_per_label(peaked_scorer, before: str, after: str) -> None:
    # Portrait and landscape: different image grids give different M-RoPE offsets after the image.
    for image in (random_image(64, 112, 1), random_image(112, 64, 2)):
        shared = peaked_scorer.score_labels(image, PROMPT, NAMES, answer_before=before, answer_after=after)
        naive = peaked_scorer.score_labels_naive(image, PROMPT, NAMES, answer_before=before, answer_after=after)
        assert np.abs(shared - naive).max() < 1e-4
        # Log space is the sensitive check: continuation positions off by the image's offset move it ~1e-2.
        assert np.abs(np.log(shared) - np.log(naive)).max() < 1e-4
        assert shared.max() > 0.2  # the peaked model does discriminate, so the comparison means something


def test_labels_are_tokenized_as_whole_answers(scorer) -> None:
    answers = scorer.answer_ids(["物流页面-物流跟踪页面", "物流页面-物流异常页面"], REASON_BEFORE, REASON_AFTER)
    assert all(answer[-1] == scorer.end_of_turn_id for answer in answers)
    assert answers[0] != answers[1] and answers[0][0] == answers[1][0]  # shared first token, yet told apart
    text = scorer.tokenizer.decode(answers[0])
    assert text == f"{REASON_BEFORE}物流页面-物流跟踪页面{REASON_AFTER}<|im_end|>"


def llamafactory_training_batch(scorer, image, prompt: str, answer: str, system: str | None) -> dict:
    """How LLaMA-Factory's training encodes one example: its supervised dataset processor (template and
    multimodal plugin), then its collator (pixels, M-RoPE position ids from the model's rope index)."""
    from llamafactory.data.collator import MultiModalDataCollatorForSeq2Seq
    from llamafactory.data.processor import SupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments

    data_args = DataArguments(template=scorer.encoder.family.template, cutoff_len=4096)
    dataset_processor = SupervisedDatasetProcessor(
        template=scorer.encoder.template,
        tokenizer=scorer.tokenizer,
        processor=scorer.encoder.processor,
        data_args=data_args,
    )
    examples = {
        "_prompt": [[{"role": "user", "content": prompt}]],
        "_response": [[{"role": "assistant", "content": answer}]],
        "_system": [system or ""],
        "_tools": [""],
        "_images": [[image]],
        "_videos": [None],
        "_audios": [None],
    }
    encoded = dataset_processor.preprocess_dataset(examples)
    collator = MultiModalDataCollatorForSeq2Seq(
        template=scorer.encoder.template,
        model=scorer.model,
        processor=scorer.encoder.processor,
        tokenizer=scorer.tokenizer,
    )
    feature = {name: encoded[name][0] for name in ("input_ids", "attention_mask", "labels")}
    return collator([{**feature, "images": [image], "videos": [], "audios": []}])


def test_token_and_position_ids_equal_llamafactory_training_encoding(scorer) -> None:
    image = random_image(1000, 900, 3)  # above LLaMA-Factory's 768 * 768 pre-resize
    label = "物流页面-物流跟踪页面"
    for system in (None, "你是电商识图助手。"):
        batch = llamafactory_training_batch(scorer, image, PROMPT, REASON_BEFORE + label + REASON_AFTER, system)
        answer = scorer.answer_ids([label], REASON_BEFORE, REASON_AFTER)[0]
        prefix = scorer.encode_prompt(image, PROMPT, system)
        whole = scorer.encode_prompt(image, PROMPT, system, answer)
        length = whole["input_ids"].shape[1]
        # The training sequence is the scored one plus the template's separator after the end of turn.
        assert whole["input_ids"][0].tolist() == batch["input_ids"][0, :length].tolist()
        trained_answer = batch["labels"][0][batch["labels"][0] != -100].tolist()
        assert trained_answer[: len(answer)] == answer
        assert torch.equal(whole["pixel_values"], batch["pixel_values"])
        assert torch.equal(whole["image_grid_thw"], batch["image_grid_thw"])
        # The scorer's positions: the prefix's from the rope index, then the shared-cache continuation's.
        prefix_positions = scorer.positions(prefix)
        continuation = scorer.continuation_positions(prefix_positions, 1, len(answer))
        ours = torch.cat([prefix_positions, continuation], dim=-1)
        assert torch.equal(ours[:, 0], batch["position_ids"][-3:, 0, :length])
    # Skipping LLaMA-Factory's pre-resize changes the pixels: the comparison above can fail.
    unresized = scorer.encoder.processor.image_processor([image.convert("RGB")], return_tensors="pt")["pixel_values"]
    assert unresized.shape != batch["pixel_values"].shape or not torch.equal(unresized, batch["pixel_values"])


@pytest.mark.slow
def test_label_trained_through_llamafactory_scores_top_on_its_image(model_dir: Path, tmp_path: Path) -> None:
    # Through llamafactory-cli rather than a hand-written loop: the model learns the workflow's real token
    # layout (its sharegpt export, the qwen2_vl template), which is what scoring must read back.
    # About 40 s on 2 cores, mostly the CLI's start-up. Labels with shared prefixes on purpose.
    trained_labels = ["物流页面-物流列表页面", "物流页面-物流跟踪页面", "退货页面"]
    system = "你是电商识图助手。"  # a non-default system prompt, carried through training and scoring
    rows = []
    for index, label in enumerate(trained_labels):
        image_path = tmp_path / f"{index}.png"
        Image.new("RGB", (64, 112), [(200, 30, 30), (30, 200, 30), (30, 30, 200)][index]).save(image_path)
        rows.append(
            {"id": str(index), "image_path": str(image_path), "prompt": PROMPT, "target": label, "system": system}
        )
    write_llamafactory_dataset(pd.DataFrame(rows), tmp_path / "data", "overfit")
    overfit_through_llamafactory(model_dir, tmp_path / "data", "overfit", tmp_path / "out", batch_size=3)
    trained = load_scorer(tmp_path / "out", num_threads=1)
    for row in rows:
        probabilities = trained.score_labels(row["image_path"], PROMPT, NAMES, system=system)
        assert NAMES[int(np.argmax(probabilities))] == row["target"]
        assert probabilities.max() > 0.5


def prompt_rows(tmp_path: Path, prompt: str = PROMPT, count: int = 2) -> pd.DataFrame:
    """Rows of different image sizes (so different visual token counts) and system turns."""
    rows = []
    for index in range(count):
        path = tmp_path / f"image{index}.png"
        random_image(64 + 48 * (index % 3), 112 - 24 * (index % 2), index).save(path)
        rows.append(
            {
                "id": f"r{index}",
                "image_path": str(path),
                "prompt": prompt,
                "system": None if index % 2 == 0 else "你是电商识图助手。",
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "variant",
    [
        make_variant("plain"),
        make_variant("reason_first", reason=True),
        make_variant("label_first", reason=True, reason_order="label_first"),
    ],
    ids=lambda variant: variant.name,
)
def test_score_table_rows_columns_and_argmax(scorer, tmp_path: Path, variant) -> None:
    table = score_table(scorer, prompt_rows(tmp_path), NAMES, variant, reason_max_new_tokens=4)
    probability_columns = [f"p::{name}" for name in NAMES]
    assert list(table.columns) == ["id", *probability_columns, "predicted", "generated"]
    assert list(table["id"]) == ["r0", "r1"]
    np.testing.assert_allclose(table[probability_columns].sum(axis=1), 1.0, atol=1e-6)
    argmax = table[probability_columns].to_numpy().argmax(axis=1)
    assert list(table["predicted"]) == [NAMES[index] for index in argmax]
    assert all(isinstance(text, str) for text in table["generated"])
    if not variant.reason_first or not variant.reason:
        assert (table["generated"] == "").all()


@pytest.mark.parametrize(
    "variant",
    [make_variant("plain"), make_variant("reason_first", reason=True)],
    ids=lambda variant: variant.name,
)
def test_batched_scoring_equals_one_image_at_a_time(peaked_scorer, tmp_path: Path, variant) -> None:
    # Rows of different lengths in one batch: left padding, per-row M-RoPE positions and per-row stops.
    prompts = prompt_rows(tmp_path, count=5)
    settings = dict(reason_max_new_tokens=12)
    one_at_a_time = score_table(peaked_scorer, prompts, NAMES, variant, batch_size=1, **settings)
    batched = score_table(peaked_scorer, prompts, NAMES, variant, batch_size=3, **settings)
    probability_columns = [f"p::{name}" for name in NAMES]
    difference = np.abs(batched[probability_columns].to_numpy() - one_at_a_time[probability_columns].to_numpy())
    assert difference.max() < 1e-4
    assert list(batched["predicted"]) == list(one_at_a_time["predicted"])
    assert list(batched["generated"]) == list(one_at_a_time["generated"])
    if variant.generates_reason:
        assert batched["generated"].str.len().min() > 0, "every row generated a reason to compare"


def test_reason_slot_and_extraction_round_trip() -> None:
    variant = make_variant("r", reason=True)
    head, tail = reason_slot(variant)
    assert (head, tail) == ('{"理由": "', '", "所属类别": "')
    generated = '图中有\\"物流\\"轨迹' + tail  # JSON-escaped quotes, as the model writes them
    reason = extract_reason(generated, tail)
    assert reason == '图中有"物流"轨迹'
    # The scored answer continues exactly the generated text.
    assert answer_around_label(variant, reason)[0] == head + generated
    assert extract_reason('图中有物流"', tail) == "图中有物流"  # stopped by the token limit


def test_missing_image_is_named(scorer, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_image.jpg"
    with pytest.raises(FileNotFoundError, match="no_such_image.jpg"):
        scorer.score_labels(missing, PROMPT, NAMES)


def test_bad_prompt_and_repeated_labels_are_refused(scorer) -> None:
    image = random_image(64, 112, 0)
    with pytest.raises(ValueError, match="exactly one <image>"):
        scorer.score_labels(image, PROMPT.replace("<image>", ""), NAMES)
    with pytest.raises(ValueError, match="distinct"):
        scorer.score_labels(image, PROMPT, ["退款页面", "退款页面"])


def test_test_shards_cover_the_test_set_once_and_merge_back_in_order():
    prompts = pd.DataFrame({"id": [f"r{i}" for i in range(9)], "split": ["train", *["test"] * 8]})
    shards = [shard_of_test_records(prompts, shard, 3) for shard in range(3)]
    assert [len(shard) for shard in shards] == [3, 3, 2]
    scored = [shard.assign(p=shard["id"].str[1:].astype(int)) for shard in shards]
    merged = merge_test_shards(scored[::-1], prompts)  # in any order of shards
    assert list(merged["id"]) == [f"r{i}" for i in range(1, 9)] and list(merged["p"]) == list(range(1, 9))
    with pytest.raises(ValueError, match=r"missing \['r1', 'r4', 'r7'\]"):
        merge_test_shards(scored[1:], prompts)  # shard 0 lost
    with pytest.raises(ValueError, match="repeated"):
        merge_test_shards([*scored, scored[0]], prompts)
    with pytest.raises(ValueError, match="test shard 3 of 3"):
        shard_of_test_records(prompts, 3, 3)
