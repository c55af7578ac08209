"""OCR stage: real RapidOCR on rendered Chinese UI text, reading order, cache, shards, engine errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from vlmflow.data.ocr import (
    OUTPUT_COLUMNS,
    OcrCache,
    OcrEngineError,
    OcrLine,
    OcrResult,
    make_ocr_engine,
    ocr_images,
    ocr_jobs,
    paddle_model_name,
    reading_order,
    select_shard,
)

FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
SCREENS = {"logistics": ["物流详情", "合计 ¥128.00"], "order": ["订单详情"]}


def normalise(text: str) -> str:
    # RapidOCR drops the space and reads ¥ as the full-width ￥; NFKC folds the latter back.
    return "".join(unicodedata.normalize("NFKC", text).split())


def render(path: Path, lines: list[str], size: tuple[int, int] = (360, 200)) -> Path:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 28)
    for row, text in enumerate(lines):
        draw.text((30, 30 + 60 * row), text, fill="black", font=font)
    image.save(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CountingEngine:
    """The real engine, counting the images it is asked to read."""

    def __init__(self, engine) -> None:
        self.engine, self.name, self.calls = engine, engine.name, []

    def read(self, image_path):
        self.calls.append(str(image_path))
        return self.engine.read(image_path)


@pytest.fixture(scope="module")
def rapidocr():
    return make_ocr_engine("rapidocr", threads=1)


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("screens")
    return {name: render(folder / f"{name}.png", lines) for name, lines in SCREENS.items()}


def image_table(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"image_sha256": [sha256(p) for p in paths], "image_path": [str(p) for p in paths]})


def box(left: float, top: float, width: float = 100, height: float = 30) -> list[list[float]]:
    return [[left, top], [left + width, top], [left + width, top + height], [left, top + height]]


# ---------------------------------------------------------------- engines


def test_rapidocr_reads_rendered_chinese_ui_text_exactly(rapidocr, screens):
    lines = rapidocr.read(screens["logistics"])
    assert [normalise(line.text) for line in lines] == ["物流详情", "合计¥128.00"]
    assert all(len(line.box) == 4 and 0.5 < line.score <= 1 for line in lines)
    assert normalise(reading_order(rapidocr.read(screens["order"]))) == "订单详情"


def test_engine_is_built_once_per_process(rapidocr):
    assert make_ocr_engine("rapidocr", threads=1)._ocr is rapidocr._ocr


def test_unknown_engine_names_the_valid_ones():
    with pytest.raises(ValueError, match="rapidocr, paddleocr"):
        make_ocr_engine("tesseract")


def write_paddle_model_dir(folder: Path, model_name: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "inference.yml").write_text(f"Global:\n  model_name: {model_name}\n", encoding="utf-8")
    return folder


def test_paddleocr_without_model_dirs_fails_before_constructing_paddleocr():
    with pytest.raises(OcrEngineError, match="text_detection_model_dir.*offline"):
        make_ocr_engine("paddleocr")


def test_paddle_model_dir_check(tmp_path):
    with pytest.raises(OcrEngineError, match="text_recognition_model_dir=.*missing: no such directory"):
        paddle_model_name(tmp_path / "missing", "text_recognition_model_dir")
    with pytest.raises(OcrEngineError, match="no inference.yml"):
        paddle_model_name(tmp_path, "text_recognition_model_dir")
    model_dir = write_paddle_model_dir(tmp_path / "det", "PP-OCRv5_mobile_det")
    assert paddle_model_name(model_dir, "text_detection_model_dir") == "PP-OCRv5_mobile_det"


@pytest.mark.skipif(importlib.util.find_spec("paddleocr") is not None, reason="paddleocr is installed here")
def test_paddleocr_not_installed_says_how_to_install(tmp_path):
    det = write_paddle_model_dir(tmp_path / "det", "PP-OCRv5_mobile_det")
    rec = write_paddle_model_dir(tmp_path / "rec", "PP-OCRv5_mobile_rec")
    with pytest.raises(OcrEngineError, match="pip install paddleocr paddlepaddle"):
        make_ocr_engine("paddleocr", text_detection_model_dir=det, text_recognition_model_dir=rec)


# ---------------------------------------------------------------- reading order


def test_reading_order_rows_top_to_bottom_left_to_right_from_shuffled_boxes():
    lines = [
        OcrLine("¥128.00", box(200, 102, height=26), 0.9),  # same row as 合计, a little lower
        OcrLine("物流详情", box(30, 30), 0.9),
        OcrLine("合计", box(30, 100), 0.9),
        OcrLine("已签收", box(200, 28), 0.9),
        OcrLine("   ", box(30, 160), 0.9),  # blank lines add nothing
    ]
    assert reading_order(lines) == "物流详情 已签收\n合计 ¥128.00"


def test_reading_order_separates_rows_closer_than_a_line_apart():
    lines = [OcrLine("下", box(0, 20, height=18), 1.0), OcrLine("上", box(50, 0, height=18), 1.0)]
    assert reading_order(lines) == "上\n下"
    assert reading_order([]) == ""


# ---------------------------------------------------------------- cache and images


def test_cache_round_trip_is_atomic_json(tmp_path):
    cache, sha = OcrCache(tmp_path, "rapidocr"), "ab" + "0" * 62
    assert cache.get(sha) is None
    result = OcrResult([OcrLine("合计", box(1, 2), 0.5)], "合计")
    cache.put(sha, result)
    path = tmp_path / "rapidocr3" / "ab" / f"{sha}.json"
    assert json.loads(path.read_text(encoding="utf-8"))["text"] == "合计"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert cache.get(sha) == result
    path.write_text("{half a fi", encoding="utf-8")
    assert cache.get(sha) is None  # a damaged entry is redone
    with pytest.raises(ValueError, match="sha256"):
        cache.get("../../etc/passwd")


def test_ocr_images_reads_each_image_once_and_reruns_from_cache(rapidocr, screens, tmp_path):
    paths = [screens["logistics"], screens["order"], screens["logistics"]]  # a duplicate image
    table = image_table(paths)
    engine = CountingEngine(rapidocr)
    first = ocr_images(table, engine, OcrCache(tmp_path, engine.name))
    assert list(first.columns) == OUTPUT_COLUMNS
    assert sorted(engine.calls) == sorted({str(p) for p in paths})
    assert list(first["image_sha256"]) == [sha256(screens["logistics"]), sha256(screens["order"])]
    assert normalise(first["text"][0]) == "物流详情合计¥128.00" and "\n" in first["text"][0]
    assert list(first["n_lines"]) == [2, 1] and not first["from_cache"].any()
    assert [line["text"] for line in json.loads(first["lines"][1])] == ["订单详情"]

    engine.calls.clear()
    second = ocr_images(table, engine, OcrCache(tmp_path, engine.name))
    assert engine.calls == [] and second["from_cache"].all()
    assert second.drop(columns="from_cache").equals(first.drop(columns="from_cache"))


def test_unreadable_and_textless_images_give_empty_text(rapidocr, tmp_path, caplog):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    blank = tmp_path / "photo.png"
    Image.new("RGB", (120, 80), (200, 120, 40)).save(blank)
    with caplog.at_level(logging.WARNING, logger="vlmflow.data.ocr"):
        out = ocr_images(image_table([broken, blank]), rapidocr, OcrCache(tmp_path / "cache", "rapidocr"))
    assert list(out["text"]) == ["", ""] and list(out["n_lines"]) == [0, 0]
    assert str(broken) in caplog.text and str(blank) not in caplog.text
    # The failure is not cached (a rerun retries it); the text-free photo is.
    cache = OcrCache(tmp_path / "cache", "rapidocr")
    assert cache.get(sha256(broken)) is None and cache.get(sha256(blank)) == OcrResult([], "")


def test_ocr_images_needs_its_columns(rapidocr, tmp_path):
    with pytest.raises(ValueError, match="image_path"):
        ocr_images(pd.DataFrame({"image_sha256": []}), rapidocr, OcrCache(tmp_path, "rapidocr"))


def test_select_shard_partitions_distinct_images_exactly():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    table = pd.DataFrame({"image_sha256": shas + shas[:5], "image_path": [f"{i}.png" for i in range(45)]})
    shards = [set(select_shard(table, shard, 3)["image_sha256"]) for shard in range(3)]
    assert set().union(*shards) == set(shas)
    assert sum(len(shard) for shard in shards) == len(shas)  # pairwise disjoint
    assert all(int(sha, 16) % 3 == k for k, shard in enumerate(shards) for sha in shard)
    with pytest.raises(ValueError):
        select_shard(table, 3, 3)


def test_engine_options_get_their_own_cache_namespace(tmp_path):
    plain = OcrCache(tmp_path, "rapidocr")
    tuned = OcrCache(tmp_path, "rapidocr", {"det_limit_type": "max"})
    again = OcrCache(tmp_path, "rapidocr", {"det_limit_type": "max"})
    assert plain.folder != tuned.folder and tuned.folder == again.folder
    assert tuned.folder.name.startswith("rapidocr3-")


def test_text_by_record_maps_ids_through_image_sha256():
    from vlmflow.data.ocr import text_by_record

    records = pd.DataFrame({"id": ["r1", "r2", "r3"], "image_sha256": ["s1", "s1", "s2"]})
    table = pd.DataFrame({"image_sha256": ["s1"], "text": ["退款成功"]})
    assert text_by_record(records, table) == {"r1": "退款成功", "r2": "退款成功", "r3": ""}
    assert text_by_record(records, None) == {"r1": "", "r2": "", "r3": ""}


def test_ocr_jobs_follow_the_cores_given_unless_set_and_keep_an_earlier_runs_count():
    assert ocr_jobs(None, None, cores=32) == (32, 1)  # a 32-core server: 32 jobs of one thread
    assert ocr_jobs(4, None, cores=32) == (4, 8)  # set shards: the cores shared among them
    assert ocr_jobs(None, 2, cores=32) == (32, 2)  # set threads: kept as set
    assert ocr_jobs(None, None, cores=None) == (4, 1)  # a cluster executor gives no core count
    assert ocr_jobs(None, None, cores=32, existing_shards=3) == (3, 10)  # the OCR already made is kept
    assert ocr_jobs(6, 1, cores=32, existing_shards=3) == (6, 1)  # an explicit count wins


def test_the_workflow_splits_ocr_over_the_cores_given_and_says_so_at_start(tmp_path):
    from conftest import run_snakemake, small_demo_config

    config = small_demo_config(tmp_path)
    config["ocr"] = {key: value for key, value in config["ocr"].items() if key != "shards"}  # the default
    planned = run_snakemake(tmp_path, config, "-n", "--cores", "3", "results/ocr/ocr.parquet").stdout
    assert re.search(r"^ocr_shard\s+3$", planned, re.M), planned
    started = run_snakemake(tmp_path, config, "--cores", "3", "resources/demo/train.json")
    assert "OCR: 3 jobs of 1 thread(s) each, for 3 cores given" in started.stderr
    (tmp_path / "results/ocr").mkdir(parents=True)
    for shard in range(2):  # an earlier run's shards, made with --cores 2
        (tmp_path / f"results/ocr/shard{shard}.parquet").touch()
    replanned = run_snakemake(tmp_path, config, "-n", "--cores", "3", "results/ocr/ocr.parquet").stdout
    # merge_ocr reads the two shards there are, not three.
    assert "results/ocr/shard1.parquet" in replanned and "shard2.parquet" not in replanned
