"""EXIF orientation (issue 18, item 2): a photo stored sideways with an EXIF orientation tag is turned upright
once, at ingestion, into a copy every later stage reads; what each stage gets is checked pixel for pixel.

The stages' own loading code runs: RapidOCR's image loader and the OCR engine (``vlmflow.data.ocr``), the
scorer's ``open_image`` (``vlmflow.model.encoding``) and LLaMA-Factory's Qwen2-VL plugin reading the image
path of the training dataset that ``write_llamafactory_dataset`` writes (``vlmflow.model.train``). Before the
copy, they disagreed: RapidOCR honours EXIF, Pillow's ``Image.open`` (the scorer, LLaMA-Factory) does not.
"""

import io
import json

import numpy as np
import pandas as pd
import pytest
from llamafactory.data.template import TEMPLATES
from PIL import Image, ImageDraw, ImageFont, ImageOps
from rapidocr.utils.load_image import LoadImage

from vlmflow.data.accounting import IngestedSplit, ingest_count
from vlmflow.data.ingest import EXIF_ORIENTATION, ingest_records, write_ingest_outputs
from vlmflow.data.labels import label_names, load_labels
from vlmflow.data.ocr import RapidOcrEngine
from vlmflow.model.encoding import open_image
from vlmflow.prompting.prompts import build_prompt_table, write_llamafactory_dataset

from conftest import REPO
from helpers.variants import make_variant

LABEL_FILE = load_labels(REPO / "config" / "labels.yaml")
LABELS = label_names(LABEL_FILE)
REFUND = "退款页面"
ROTATE_90_CLOCKWISE = 6  # the EXIF orientation of a phone held on its side


def upright_screen() -> Image.Image:
    """A portrait screen: a red band on top, a blue one at the bottom, a line of text in between."""
    image = Image.new("RGB", (240, 400), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 239, 79), fill=(220, 0, 0))
    draw.rectangle((0, 320, 239, 399), fill=(0, 0, 220))
    draw.text((20, 180), "REFUND 42", fill="black", font=ImageFont.load_default(size=36))
    return image


def jpeg_with_exif(image: Image.Image, exif: bytes) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A rotated-EXIF photo (stored landscape, tagged to be shown turned 90 degrees clockwise), an upright
    one, and one whose EXIF block is corrupt."""
    data = tmp_path_factory.mktemp("orientation_data")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CLOCKWISE
    # Stored a quarter turn counter-clockwise: the tag says to turn it back.
    (data / "rotated.jpg").write_bytes(jpeg_with_exif(upright_screen().transpose(Image.Transpose.ROTATE_90), exif))
    upright_screen().save(data / "upright.png")
    (data / "corrupt.jpg").write_bytes(
        jpeg_with_exif(upright_screen(), b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05")
    )
    records = [
        {"id": "rotated", "image": "rotated.jpg", "label": REFUND},
        {"id": "upright", "image": "upright.png", "label": REFUND},
        {"id": "corrupt", "image": "corrupt.jpg", "label": REFUND},
    ]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def ingested(data_dir, tmp_path_factory):
    upright_dir = tmp_path_factory.mktemp("upright")
    result = ingest_records(data_dir / "train.jsonl", label_set=LABELS, labelled=True, upright_image_dir=upright_dir)
    return result, upright_dir


@pytest.fixture(scope="module")
def rotated_path(ingested):
    records = ingested[0].records.set_index("id")
    return records.loc["rotated", "image_path"]


@pytest.fixture(scope="module")
def expected(data_dir):
    """The photo as a viewer shows it: Pillow's EXIF transpose of the stored file."""
    with Image.open(data_dir / "rotated.jpg") as stored:
        return np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))


def test_the_stored_photo_is_sideways_until_its_exif_is_applied(data_dir, expected):
    with Image.open(data_dir / "rotated.jpg") as stored:
        assert stored.size == (400, 240)
    assert expected.shape == (400, 240, 3)
    assert expected[20, 120, 0] > 200 and expected[380, 120, 2] > 200  # red on top, blue at the bottom


def test_ingestion_points_the_record_at_an_upright_copy_named_by_sha256(ingested, rotated_path):
    result, upright_dir = ingested
    record = result.records.set_index("id").loc["rotated"]
    assert rotated_path == str(upright_dir / f"{record['image_sha256']}.png")
    assert (record["width"], record["height"]) == (240, 400)
    assert result.counts()["oriented"] == 1
    assert not result.records.set_index("id").loc["upright", "image_path"].startswith(str(upright_dir))


def test_ocr_gets_the_upright_pixels_and_reads_the_text(rotated_path, expected):
    # RapidOCR's own loader, which RapidOCR.__call__ runs on the path it is given.
    loaded = LoadImage()(rotated_path)
    assert loaded.shape == expected.shape
    assert np.array_equal(loaded[..., ::-1], expected)  # the loader hands OpenCV BGR
    text = " ".join(line.text for line in RapidOcrEngine().read(rotated_path))
    assert "REFUND" in text.upper()


def test_the_scorer_gets_the_upright_pixels(rotated_path, expected, data_dir):
    assert np.array_equal(np.asarray(open_image(rotated_path).convert("RGB")), expected)
    # The stored file through the same loader: sideways. This is what the copy prevents.
    assert open_image(data_dir / "rotated.jpg").size == (400, 240)


def test_llamafactory_gets_the_upright_pixels_from_the_training_dataset(ingested, expected, tmp_path):
    records = ingested[0].records.assign(split="train")
    prompts = build_prompt_table(records, {}, make_variant("baseline"), LABEL_FILE)
    dataset = json.loads(write_llamafactory_dataset(prompts, tmp_path, "train").read_text(encoding="utf-8"))
    image_path = {row.image_path: row.id for row in prompts.itertuples()}
    (rotated,) = [entry["images"][0] for entry in dataset if image_path[entry["images"][0]] == "rotated"]
    plugin = TEMPLATES["qwen2_vl"].mm_plugin
    loaded = plugin._regularize_images([rotated], image_max_pixels=768 * 768, image_min_pixels=32 * 32)["images"][0]
    assert np.array_equal(np.asarray(loaded), expected)


def test_a_corrupt_exif_block_is_ingested_unrotated_and_reported(ingested, data_dir, tmp_path):
    result, _ = ingested
    record = result.records.set_index("id").loc["corrupt"]
    assert record["image_path"] == str(data_dir / "corrupt.jpg")
    (flag,) = result.counts()["flagged"]
    assert flag["id"] == "corrupt" and flag["position"] == "train.jsonl line 3"
    assert flag["reason"].startswith("exif_unreadable: the EXIF block cannot be read")
    # The accounting lists it as flagged at ingestion, with the reason; records in = out + rejected.
    paths = [tmp_path / name for name in ("train.parquet", "rejected.csv", "counts.json")]
    write_ingest_outputs(result, *paths)
    count = ingest_count("train", IngestedSplit.read(*paths))
    issues = count.issues.set_index("id")
    assert issues.loc["corrupt", "outcome"] == "flagged" and "exif_unreadable" in issues.loc["corrupt", "reason"]
    assert count.summary()["records_in"] == count.summary()["records_out"] == 3


def test_the_upright_copy_is_written_once_and_shared(data_dir, ingested):
    result, upright_dir = ingested
    again = ingest_records(data_dir / "train.jsonl", label_set=LABELS, labelled=True, upright_image_dir=upright_dir)
    pd.testing.assert_frame_equal(again.records, result.records)
    assert len(list(upright_dir.iterdir())) == 1
