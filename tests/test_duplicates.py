"""Duplicate images (issue 18, item 1): exact copies within train (same label, conflicting labels) and between
train and test, near-duplicates (a resized, recompressed JPEG), the folds that keep each group together, the
label conflicts that reach label correction and the submission's use of test copies.

The fixture plants each case among distinct random images; a rule-level Snakemake run takes it through
ingestion, find_duplicates and assign_folds.
"""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from vlmflow.data.accounting import IngestedSplit, ingest_count
from vlmflow.data.duplicates import (
    CONFLICT_METHOD,
    find_duplicates,
    predict_from_train,
)
from vlmflow.data.folds import assign_folds
from vlmflow.data.ingest import ingest_records, write_ingest_outputs
from vlmflow.data.labels import label_names, load_labels
from vlmflow.recipe.correction import correct_labels

from conftest import REPO, run_snakemake, small_demo_config

LABELS = label_names(load_labels(REPO / "config" / "labels.yaml"))
REFUND, RETURN, CART = "退款页面", "退货页面", "购物车页面"
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def random_image(seed: int, size=(160, 240)) -> Image.Image:
    """A distinct picture per seed: a random 12x12 grid of colours, scaled up (perceptual hashes far apart)."""
    grid = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def resized_recompressed(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(out, "JPEG", quality=50)
    return out.getvalue()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train.jsonl and test.jsonl with planted duplicates; which ids are which is in the comments."""
    data = tmp_path_factory.mktemp("duplicates_data")
    images = data / "images"
    images.mkdir()
    labels = [REFUND, RETURN, CART]
    train = []
    for index in range(18):  # distinct images, six of each class
        random_image(index).save(images / f"u{index}.png")
        train.append({"id": f"u{index}", "image": f"images/u{index}.png", "label": labels[index % 3]})
    # The same image three times with one label (exact copies, same label).
    random_image(100).save(images / "same.png")
    for copy in range(3):
        shutil.copy(images / "same.png", images / f"same{copy}.png")
        train.append({"id": f"same{copy}", "image": f"images/same{copy}.png", "label": REFUND})
    # The same image three times, two labels (a label conflict: RETURN is the majority).
    random_image(101).save(images / "conflict.png")
    for copy, label in enumerate([RETURN, CART, RETURN]):
        shutil.copy(images / "conflict.png", images / f"conflict{copy}.png")
        train.append({"id": f"conflict{copy}", "image": f"images/conflict{copy}.png", "label": label})
    # A near-duplicate: the same picture resized to 2/3 and saved as a JPEG of quality 50.
    random_image(102).save(images / "near_a.png")
    (images / "near_b.jpg").write_bytes(resized_recompressed(random_image(102)))
    train.append({"id": "near_a", "image": "images/near_a.png", "label": CART})
    train.append({"id": "near_b", "image": "images/near_b.jpg", "label": CART})
    # A test image that is an exact copy of a training image; the other test images are new.
    shutil.copy(images / "u4.png", images / "t_copy.png")
    test = [{"id": "t_copy", "image": "images/t_copy.png"}]
    for index in range(200, 203):
        random_image(index).save(images / f"t{index}.png")
        test.append({"id": f"t{index}", "image": f"images/t{index}.png"})
    for name, records in (("train", train), ("test", test)):
        lines = (json.dumps(record, ensure_ascii=False) for record in records)
        (data / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def ingested(data_dir, tmp_path_factory):
    upright = tmp_path_factory.mktemp("upright")
    return {
        split: ingest_records(
            data_dir / f"{split}.jsonl", label_set=LABELS, labelled=split == "train", upright_image_dir=upright
        )
        for split in ("train", "test")
    }


@pytest.fixture(scope="module")
def duplicates(ingested):
    return find_duplicates(ingested["train"].records, ingested["test"].records, near_duplicate_distance=16)


def test_ingestion_counts_exact_copies_with_same_and_conflicting_labels(ingested, tmp_path):
    # u4's copy is a test record: a split counts only its own copies.
    assert ingested["train"].counts()["exact_duplicates"] == {
        "groups": 2,
        "extra_copies": 4,
        "same_label_groups": 1,
        "conflicting_label_groups": 1,
    }
    assert ingested["test"].counts()["exact_duplicates"]["groups"] == 0
    # The record accounting's ingestion stage shows them.
    paths = [tmp_path / name for name in ("train.parquet", "rejected.csv", "counts.json")]
    write_ingest_outputs(ingested["train"], *paths)
    stage = ingest_count("train", IngestedSplit.read(*paths)).summary()
    assert stage["exact_duplicates"]["extra_copies"] == 4 and stage["records_out"] == 26


def test_exact_copies_are_listed_with_their_group_facts(duplicates):
    exact = duplicates.exact.set_index("id")
    assert set(exact.index) == {"same0", "same1", "same2", "conflict0", "conflict1", "conflict2", "u4", "t_copy"}
    assert not exact.loc["same0", "label_conflict"] and exact.loc["conflict1", "label_conflict"]
    assert exact.loc["t_copy", "in_test_and_train"] and exact.loc["u4", "in_test_and_train"]
    assert exact.loc["same0", "copies"] == 3


def test_conflicting_labels_become_review_rows_proposing_the_majority(duplicates):
    conflicts = duplicates.conflicts
    assert conflicts.to_dict("records") == [
        {
            "id": "conflict1",
            "given": CART,
            "proposed": RETURN,
            "confidence": pytest.approx(2 / 3),
            "method": CONFLICT_METHOD,
        }
    ]


def test_a_tie_proposes_the_label_met_first(ingested):
    train = ingested["train"].records
    tied = train[train["id"].isin(["conflict0", "conflict1"])]  # RETURN then CART, one each
    conflicts = find_duplicates(tied, train.iloc[:0], 16).conflicts
    assert conflicts[["id", "proposed", "confidence"]].to_dict("records") == [
        {"id": "conflict1", "proposed": RETURN, "confidence": 0.5}
    ]


def test_a_resized_recompressed_copy_is_a_near_duplicate_and_distinct_images_are_not(duplicates):
    near = duplicates.near
    assert near[["id_a", "id_b"]].to_dict("records") == [{"id_a": "near_a", "id_b": "near_b"}]
    assert 0 < near["distance"].iloc[0] <= 16


def test_flat_images_of_different_colours_are_not_near_duplicates(tmp_path):
    """A one-colour image hashes to all zeros whatever its colour: only its exact copies link it."""
    paths = []
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200)), ("red_copy", (200, 0, 0))):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    train = pd.DataFrame(
        {"id": ["red", "blue", "red_copy"], "image_path": paths, "label": [CART] * 3, "image_sha256": ["r", "b", "r"]}
    )
    duplicates = find_duplicates(train, train.iloc[:0], near_duplicate_distance=16)
    assert duplicates.near.empty
    assert duplicates.groups["group"].tolist() == ["red", "blue", "red"]


def test_test_copies_of_train_take_the_training_label_when_asked(duplicates):
    assert duplicates.test_copies.to_dict("records") == [{"id": "t_copy", "label": RETURN, "train_ids": "u4"}]
    predictions = pd.DataFrame({"id": ["t_copy", "t200"], "predicted": [CART, CART]})
    chosen = predict_from_train(predictions, duplicates.test_copies, "predict_from_train")
    assert chosen["predicted"].tolist() == [RETURN, CART]
    assert predict_from_train(predictions, duplicates.test_copies, "score")["predicted"].tolist() == [CART, CART]
    with pytest.raises(ValueError, match="data.test_duplicates must be one of"):
        predict_from_train(predictions, duplicates.test_copies, "vote")


def test_groups_join_exact_copies_and_near_duplicates(duplicates):
    group = duplicates.groups.set_index("id")["group"]
    assert group["same0"] == group["same1"] == group["same2"]
    assert group["conflict0"] == group["conflict1"] == group["conflict2"]
    assert group["near_a"] == group["near_b"]
    assert group[[f"u{i}" for i in range(18)]].nunique() == 18
    summary = duplicates.summary()
    assert summary["train_groups"] == 18 + 3 and summary["train_groups_of_two_or_more"] == 3
    assert summary["label_conflicts"] == 1 and summary["test_copies_of_train"] == 1


@pytest.mark.parametrize("seed", range(5))
def test_no_duplicate_group_spans_two_folds(ingested, duplicates, seed):
    train = ingested["train"].records
    groups = train["id"].map(duplicates.groups.set_index("id")["group"])
    folds, report = assign_folds(train, n_folds=3, seed=seed, groups=groups)
    assert (folds.assign(group=groups.to_numpy()).groupby("group")["fold"].nunique() == 1).all()
    assert report["n_groups"] == 21 and report["n_groups_of_two_or_more"] == 3
    assert report["records_in_groups_of_two_or_more"] == 8


def test_too_few_groups_for_the_folds_fail_naming_the_key():
    records = pd.DataFrame({"id": list("abcdef"), "label": ["x"] * 6})
    with pytest.raises(ValueError, match="form 2 duplicate group"):
        assign_folds(records, n_folds=3, seed=0, groups=pd.Series(list("aaabbb")))


@pytest.mark.parametrize("distance", [-1, 65])
def test_a_near_duplicate_distance_outside_its_range_fails(duplicates, ingested, distance):
    with pytest.raises(ValueError, match="data.near_duplicate_distance must be 0 to 64"):
        find_duplicates(ingested["train"].records, ingested["test"].records, distance)
    with pytest.raises(WorkflowError, match=str(distance)):
        validate({"data": {"near_duplicate_distance": distance}}, SCHEMA)


def test_label_correction_flags_conflicts_and_auto_mode_makes_the_copies_agree(ingested, duplicates, tmp_path):
    train = ingested["train"].records
    correction = correct_labels(
        train,
        pd.DataFrame(),
        LABELS,
        method="none",
        min_confidence=0.0,
        overrides_path=str(tmp_path / "overrides.csv"),
        apply="auto",
        ocr_text={},
        review_html=tmp_path / "review.html",
        duplicate_conflicts=duplicates.conflicts,
    )
    assert correction.issues["method"].tolist() == [CONFLICT_METHOD]
    corrected = correction.corrected.set_index("id")["label"]
    assert corrected[["conflict0", "conflict1", "conflict2"]].tolist() == [RETURN] * 3
    assert "conflict1" in (tmp_path / "review.html").read_text(encoding="utf-8")


def test_the_rules_keep_each_duplicate_group_in_one_fold(data_dir, tmp_path):
    """Ingestion, find_duplicates and assign_folds through Snakemake on the planted duplicates."""
    config = small_demo_config(
        tmp_path,
        data={"train": str(data_dir / "train.jsonl"), "test": str(data_dir / "test.jsonl"), "truth": None},
        train={"folds": 3},
    )
    run_snakemake(tmp_path, config, "--cores", "2", "results/folds/folds.csv", "results/data/duplicates.json")
    folds = pd.read_csv(tmp_path / "results/folds/folds.csv", dtype={"id": str})
    groups = pd.read_csv(tmp_path / "results/data/duplicate_groups.csv", dtype=str)
    joined = folds.merge(groups, on="id", validate="one_to_one")
    assert len(joined) == 26 and (joined.groupby("group")["fold"].nunique() == 1).all()
    report = json.loads((tmp_path / "results/folds/report.json").read_text(encoding="utf-8"))
    assert report["n_groups"] == 21 and report["n_groups_of_two_or_more"] == 3
    counts = json.loads((tmp_path / "results/data/train_counts.json").read_text(encoding="utf-8"))
    assert counts["exact_duplicates"]["conflicting_label_groups"] == 1
    conflicts = pd.read_csv(tmp_path / "results/data/label_conflicts.csv", dtype=str)
    assert conflicts["id"].tolist() == ["conflict1"] and conflicts["method"].tolist() == [CONFLICT_METHOD]
