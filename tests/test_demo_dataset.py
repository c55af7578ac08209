"""The generated demo dataset: MIRE-format files, planted label flips, determinism, pictures."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from vlmflow.data.labels import Label, baseline_prompt, label_names, load_labels
from vlmflow.demo.dataset import (
    PAGES,
    confusable_labels,
    generate_demo_dataset,
    plan_demo_records,
    render_demo_image,
)
from vlmflow.runtime.fonts import FONT_ENV_VAR, find_cjk_font

LABELS = load_labels(Path(__file__).resolve().parents[1] / "config" / "labels.yaml")
NAMES = label_names(LABELS)
SPLITS = ("train", "test")
TINY = {"n_train": 30, "n_test": 10, "flip_fraction": 0.1, "seed": 7}


def read_dataset(root: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    splits = {split: json.loads((root / f"{split}.json").read_text(encoding="utf-8")) for split in SPLITS}
    with open(root / "truth.csv", encoding="utf-8", newline="") as handle:
        return splits, list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, generate_demo_dataset(root, LABELS, **TINY)


def test_records_and_truth_agree(tiny):
    root, counts = tiny
    splits, truth = read_dataset(root)
    assert counts == {"train": 30, "test": 10, "flipped": 3}
    assert [row["id"] for row in truth] == [record["id"] for split in SPLITS for record in splits[split]]
    assert Counter(row["split"] for row in truth) == {"train": 30, "test": 10}
    for records in splits.values():
        for record in records:
            assert re.fullmatch(r"[0-9a-f]{30}", record["id"])
            assert record["instruction"] == "Picture 1: " + baseline_prompt(LABELS)
            assert record["instruction"].startswith("Picture 1: <image>\n")
            assert record["input"] == ""
            assert record["image"] == [f"images/{record['id']}-0.jpg"]
            assert (root / record["image"][0]).is_file()
    assert len(list((root / "images").iterdir())) == 40


def test_train_outputs_are_given_labels_and_test_outputs_are_empty(tiny):
    root, _ = tiny
    splits, truth = read_dataset(root)
    given = {row["id"]: row["given_label"] for row in truth}
    assert all(record["output"] == given[record["id"]] for record in splits["train"])
    assert all(record["output"] in NAMES for record in splits["train"])
    assert all(record["output"] == "" for record in splits["test"])
    assert all(row["label"] in NAMES for row in truth)
    test_rows = [row for row in truth if row["split"] == "test"]
    assert all(row["given_label"] == "" and row["flipped"] == "False" for row in test_rows)


def test_exactly_the_planted_flips_land_in_confusable_groups(tiny):
    _, truth = read_dataset(tiny[0])
    flipped = [row for row in truth if row["flipped"] == "True"]
    assert len(flipped) == round(TINY["flip_fraction"] * TINY["n_train"])
    kept = [row for row in truth if row["split"] == "train" and row["flipped"] == "False"]
    assert all(row["label"] == row["given_label"] for row in kept)
    assert all(row["label"] != row["given_label"] for row in flipped)
    records = plan_demo_records(LABELS, n_train=500, n_test=0, flip_fraction=0.2, seed=3)
    flips = [record for record in records if record.flipped]
    assert len(flips) == 100
    for record in flips:
        assert record.given_label != record.label
        group = confusable_labels(record.label, NAMES)
        if group:
            assert record.given_label in group
    assert confusable_labels("退款页面", NAMES) == ["退货页面", "换货页面"]
    assert confusable_labels("评论区截图页面", NAMES) == []


def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    root, _ = tiny
    generate_demo_dataset(tmp_path, LABELS, **TINY)
    for name in ("train.json", "test.json", "truth.csv"):
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes(), name
    first_image = json.loads((root / "train.json").read_text(encoding="utf-8"))[0]["image"][0]
    assert (tmp_path / first_image).read_bytes() == (root / first_image).read_bytes()


def test_another_seed_gives_other_data(tiny, tmp_path):
    root, _ = tiny
    generate_demo_dataset(tmp_path, LABELS, **{**TINY, "seed": 8})
    assert (tmp_path / "truth.csv").read_bytes() != (root / "truth.csv").read_bytes()
    ids = {path.name for path in (tmp_path / "images").iterdir()}
    assert not ids & {path.name for path in (root / "images").iterdir()}
    same_page = [render_demo_image("购物车页面", seed, (360, 640), find_cjk_font()) for seed in (1, 2)]
    assert same_page[0].tobytes() != same_page[1].tobytes()


def test_images_have_the_requested_size(tiny, tmp_path):
    root, _ = tiny
    assert {Image.open(path).size for path in (root / "images").iterdir()} == {(360, 640)}
    generate_demo_dataset(tmp_path, LABELS, n_train=3, n_test=2, image_size=(200, 300))
    assert {Image.open(path).size for path in (tmp_path / "images").iterdir()} == {(200, 300)}
    for label in NAMES:  # the workflow's schema allows images down to 32 pixels a side
        assert render_demo_image(label, 5, (32, 32), find_cjk_font()).size == (32, 32)


def test_class_sizes_are_imbalanced_and_absent_classes_stay_out_of_train():
    absent = ("消费者与客服聊天页面", "个人信息页面")
    records = plan_demo_records(LABELS, n_train=500, n_test=200, flip_fraction=0.1, absent_from_train=absent)
    train = Counter(record.label for record in records if record.split == "train")
    test = Counter(record.label for record in records if record.split == "test")
    assert sum(train.values()) == 500 and sum(test.values()) == 200
    assert set(train) == set(NAMES) - set(absent) and set(test) == set(NAMES)
    assert max(train.values()) >= 1.5 * min(train.values())
    assert not {record.given_label for record in records} & set(absent)


def test_every_class_is_in_train_by_default():
    records = plan_demo_records(LABELS, n_train=100, n_test=25)
    assert {record.label for record in records if record.split == "train"} == set(NAMES)
    assert {record.label for record in records if record.split == "test"} == set(NAMES)


def test_unknown_labels_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="cannot draw"):
        plan_demo_records([*LABELS, Label("新类别", "")])
    with pytest.raises(ValueError, match="absent_from_train names unknown labels"):
        plan_demo_records(LABELS, absent_from_train=("不存在的类别",))
    with pytest.raises(ValueError, match="flip_fraction"):
        plan_demo_records(LABELS, flip_fraction=1.5)


def test_font_is_found_from_the_environment_or_refused_with_a_hint(monkeypatch, tmp_path):
    font = find_cjk_font()
    monkeypatch.setenv(FONT_ENV_VAR, str(font))
    assert find_cjk_font() == font
    with pytest.raises(FileNotFoundError, match="apt-get install -y fonts-wqy-microhei"):
        find_cjk_font(tmp_path / "missing.ttc")
    with pytest.raises(FileNotFoundError):
        generate_demo_dataset(tmp_path, LABELS, n_train=1, n_test=1, font_path=tmp_path / "missing.ttc")
    assert not (tmp_path / "train.json").exists()


def test_the_font_draws_every_character_of_the_page_vocabulary():
    """No tofu: each character's glyph differs from the font's missing-glyph box."""
    font = ImageFont.truetype(str(find_cjk_font()), 20)

    def glyph(character: str) -> bytes:
        image = Image.new("L", (24, 24))
        ImageDraw.Draw(image).text((0, 0), character, font=font, fill=255)
        return image.tobytes()

    missing = glyph("\U000f0000")  # a private-use code point no font draws
    characters = {
        character
        for page in PAGES.values()
        for text in (*page.words, *page.titles, *page.headline, *page.buttons, *page.popup)
        for character in text
    }
    assert len(characters) > 200
    tofu = sorted(character for character in characters if glyph(character) in (missing, bytes(24 * 24)))
    assert tofu == []
