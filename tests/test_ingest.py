"""Data ingestion: every bad-input kind gets a message naming the record, and nothing is lost."""

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vlmflow.data.ingest import BadRecordsError, DataFileError, ingest_records, write_ingest_outputs

LABELS = ["退款页面", "退货页面", "支付页面"]


def save_image(path: Path, size=(40, 60), color=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def mire_record(record_id, image, label="退款页面"):
    return {
        "id": record_id,
        "instruction": "Picture 1: <image>\n你是一个电商领域识图专家,请对图片进行分类。",
        "input": "",
        "output": label,
        "image": [image],
    }


@pytest.fixture
def data_dir(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save_image(tmp_path / "images" / name)
    return tmp_path


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def ingest(path, on_error="skip", **kwargs):
    return ingest_records(path, label_set=LABELS, labelled=True, on_error=on_error, **kwargs)


def test_mire_json_is_normalised_to_one_table(data_dir):
    path = write_json(
        data_dir / "train.json",
        [mire_record("r1", "images/a.jpg"), mire_record("r2", "images/b.jpg", "支付页面")],
    )
    result = ingest(path, on_error="fail")
    assert list(result.records["id"]) == ["r1", "r2"]
    assert list(result.records["label"]) == ["退款页面", "支付页面"]
    assert result.records.loc[0, "image_path"] == str(data_dir / "images" / "a.jpg")
    assert (result.records["width"] == 40).all() and (result.records["height"] == 60).all()
    assert result.records["image_sha256"].str.len().eq(64).all()
    assert result.rejected.empty


def test_dialogue_records_are_filtered_and_counted(data_dir):
    dialogue = {**mire_record("d1", "images/a.jpg"), "instruction": "你是一个电商客服专家,请回答"}
    result = ingest(write_json(data_dir / "t.json", [mire_record("r1", "images/a.jpg"), dialogue]), on_error="fail")
    assert list(result.records["id"]) == ["r1"]
    assert result.counts()["rejected_by_reason"] == {"other_subtask": 1}


def test_jsonl_and_csv_read_the_same_records(data_dir):
    lines = [json.dumps({"id": "r1", "image": "images/a.jpg", "label": "退货页面"}, ensure_ascii=False)]
    (data_dir / "t.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data_dir / "t.csv").write_text("id,image,label\nr1,images/a.jpg,退货页面\n", encoding="utf-8")
    from_jsonl = ingest(data_dir / "t.jsonl", on_error="fail").records
    from_csv = ingest(data_dir / "t.csv", on_error="fail").records
    pd.testing.assert_frame_equal(from_jsonl, from_csv)


def test_unlabelled_split_has_null_labels(data_dir):
    path = write_json(data_dir / "test.json", [mire_record("t1", "images/a.jpg", "")])
    result = ingest_records(path, label_set=LABELS, labelled=False)
    assert result.records["label"].isna().all()


def test_foreign_absolute_paths_resolve_by_file_name_in_image_dir(data_dir, tmp_path):
    path = write_json(data_dir / "train.json", [mire_record("r1", "/content/train/images/a.jpg")])
    result = ingest(path, on_error="fail", image_dir=data_dir / "images")
    assert result.records.loc[0, "image_path"] == str(data_dir / "images" / "a.jpg")


@pytest.mark.parametrize(
    ("make_record", "kind", "message"),
    [
        (
            lambda d: mire_record("r9", "images/missing.jpg"),
            "image_not_found",
            "image 'images/missing.jpg' not found",
        ),
        (
            lambda d: mire_record("r9", "images/a.jpg", "不存在的标签"),
            "unknown_label",
            "'不存在的标签' is not in",
        ),
        (lambda d: mire_record("r9", "images/a.jpg", ""), "missing_label", "has no label"),
        (lambda d: mire_record("", "images/a.jpg"), "missing_id", "has no id"),
        (
            lambda d: mire_record("r1", "images/b.jpg"),
            "duplicate_id",
            "duplicate id 'r1', first seen at t.json record 0",
        ),
        (lambda d: mire_record("r9", "../outside/x.jpg"), "image_escapes_root", "escapes the data root"),
        (lambda d: mire_record("r9", "images/broken.jpg"), "image_unreadable", "broken.jpg is unreadable"),
        (lambda d: mire_record("r9", "images/cut.jpg"), "image_unreadable", "cut.jpg is unreadable"),
        (
            lambda d: mire_record("r9", "images/huge.png"),
            "image_too_large",
            "above data.max_image_pixels = 5000",
        ),
        (
            lambda d: {**mire_record("r9", "images/a.jpg"), "image": ["x.jpg", "y.jpg"]},
            "image_count",
            "has 2 images",
        ),
    ],
)
def test_each_bad_record_is_named_with_its_problem(tmp_path, make_record, kind, message):
    data = tmp_path / "data"
    save_image(data / "images" / "a.jpg")
    save_image(data / "images" / "b.jpg")
    save_image(tmp_path / "outside" / "x.jpg")
    (data / "images" / "broken.jpg").write_bytes(b"this is not a jpeg")
    full = data / "images" / "full.jpg"
    Image.effect_noise((60, 60), 60).convert("RGB").save(full, quality=95)
    (data / "images" / "cut.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    save_image(data / "images" / "huge.png", size=(100, 100))
    path = write_json(data / "t.json", [mire_record("r1", "images/a.jpg"), make_record(data)])

    with pytest.raises(BadRecordsError) as failure:
        ingest(path, on_error="fail", max_image_pixels=5000)
    assert "t.json record 1" in str(failure.value) and message in str(failure.value)
    assert "data.on_error: skip" in str(failure.value)

    result = ingest(path, on_error="skip", max_image_pixels=5000)
    assert list(result.records["id"]) == ["r1"]
    assert result.rejected.loc[0, "record"] == "t.json record 1"
    assert result.rejected.loc[0, "reason"].startswith(f"{kind}: ") and message in result.rejected.loc[0, "reason"]
    assert result.records_in == len(result.records) + len(result.rejected)


def test_symlink_out_of_the_root_is_rejected(data_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    save_image(outside / "secret.jpg")
    (data_dir / "images" / "link.jpg").symlink_to(outside / "secret.jpg")
    path = write_json(data_dir / "t.json", [mire_record("r1", "images/link.jpg")])
    assert "escapes the data root" in ingest(path).rejected.loc[0, "reason"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.json", b"  \n", "data file is empty"),
        ("bad.json", b'[{"id": "r1",', "malformed JSON at line 1"),
        ("latin.json", '[{"id": "é"}]'.encode("latin-1"), "not UTF-8 text (byte 9"),
        ("object.json", b'{"id": "r1"}', "holds one list of records"),
        ("nocols.csv", b"name,path\nr1,a.jpg\n", "lacks the column(s) ['id', 'image']"),
        ("data.parquet", b"PAR1", "unknown data format '.parquet'"),
    ],
)
def test_unreadable_files_fail_with_the_file_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataFileError) as failure:
        ingest(tmp_path / name)
    assert name in str(failure.value) and message in str(failure.value)


def test_bad_jsonl_lines_are_rejected_one_by_one(data_dir):
    good = json.dumps({"id": "r1", "image": "images/a.jpg", "label": "退款页面"}, ensure_ascii=False)
    content = good.encode() + b"\n{not json\n" + '{"id": "é"}'.encode("latin-1") + b"\n[1, 2]\n"
    (data_dir / "t.jsonl").write_bytes(content)
    result = ingest(data_dir / "t.jsonl")
    assert list(result.records["id"]) == ["r1"]
    assert list(result.rejected["record"]) == ["t.jsonl line 2", "t.jsonl line 3", "t.jsonl line 4"]
    assert result.counts()["rejected_by_reason"] == {"malformed": 2, "not_utf8": 1}


def test_records_in_equal_records_out_plus_rejected_and_outputs_say_so(data_dir):
    records = [mire_record(f"r{i}", "images/a.jpg") for i in range(5)]
    records += [
        mire_record("r0", "images/b.jpg"),
        mire_record("r7", "images/nope.jpg"),
        mire_record("r8", "images/c.jpg", "?"),
    ]
    result = ingest(write_json(data_dir / "t.json", records))
    write_ingest_outputs(result, data_dir / "out.parquet", data_dir / "rejected.csv", data_dir / "counts.json")

    counts = json.loads((data_dir / "counts.json").read_text())
    assert counts == {
        "records_in": 8,
        "records_out": 5,
        "rejected": 3,
        "rejected_by_reason": {"duplicate_id": 1, "image_not_found": 1, "unknown_label": 1},
        "oriented": 0,
        # r0 to r4 share images/a.jpg: one image, four extra copies, one label.
        "exact_duplicates": {"groups": 1, "extra_copies": 4, "same_label_groups": 1, "conflicting_label_groups": 0},
        "flagged": [],
    }
    assert len(pd.read_parquet(data_dir / "out.parquet")) == 5
    assert len(pd.read_csv(data_dir / "rejected.csv")) == 3


def test_fail_mode_lists_every_bad_record_not_only_the_first(data_dir):
    records = [mire_record("r1", "images/nope1.jpg"), mire_record("r2", "images/nope2.jpg")]
    with pytest.raises(BadRecordsError) as failure:
        ingest(write_json(data_dir / "t.json", records), on_error="fail")
    assert "2 bad record(s)" in str(failure.value)
    assert "record 0 (id r1)" in str(failure.value) and "record 1 (id r2)" in str(failure.value)
