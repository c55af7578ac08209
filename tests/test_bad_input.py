"""Bad input through the DAG (issue 6): each case ends in an error naming the record, or in a reported skip.

One tiny dataset holds every bad case. It goes through the real rules (ingest, OCR, prompts, folds and the
record accounting) in three Snakemake runs: with data.on_error: skip, with fail, and under a prompt length
limit one record is over. No training.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from vlmflow.data.ingest import DataFileError, ingest_records
from vlmflow.data.labels import LabelFileError, load_labels
from vlmflow.prompting.prompts import build_prompt
from vlmflow.recipe.correction import find_label_issues

from conftest import REPO, run_snakemake, small_demo_config
from helpers.variants import make_variant

ACCOUNTING = "results/baseline_ocr/accounting/stages.json"
ONE_TRY = ["--cores", "1", "--retries", "0"]  # a bad record fails every try; the default profile retries once

REFUND, RETURN, CART = "退款页面", "退货页面", "购物车页面"  # 4 records, 2 (below K = 3) and 1 (a single sample)
FOLDS = 3
LABELS = load_labels(REPO / "config" / "labels.yaml")
# Every prompt of baseline_ocr without OCR text is this long; the one image with text makes a longer one.
TEXTLESS_PROMPT = len(build_prompt(make_variant("baseline_ocr", ocr=True), LABELS, ""))


def save_plain(path, index):
    Image.new("RGB", (48, 48), (40 * index % 256, 90, 200 - 15 * index)).save(path)  # no text: OCR reads nothing


def save_text(path):
    image = Image.new("RGB", (160, 48), "white")
    ImageDraw.Draw(image).text((8, 8), "REFUND 42", fill="black", font=ImageFont.load_default(size=24))
    image.save(path)


def save_truncated(path):
    full = path.with_suffix(".full.jpg")
    Image.effect_noise((60, 60), 60).convert("RGB").save(full, quality=95)
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])


def line(record, ascii_only=False):
    return json.dumps(record, ensure_ascii=ascii_only).encode("utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train.jsonl (11 lines, 4 of them bad) and test.jsonl (4 lines, 1 bad), images beside them."""
    data = tmp_path_factory.mktemp("bad_input_data")
    images = data / "images"
    images.mkdir()
    save_text(images / "a_text.png")
    for index, name in enumerate(["a1", "a2", "b0", "b1", "c0", "q0", "q1", "q_known", "q_bad"]):
        save_plain(images / f"{name}.png", index)
    # Decodes and passes ingestion, but OpenCV (inside RapidOCR) cannot convert 32-bit integer pixels.
    Image.fromarray(np.full((48, 48), 70000, dtype=np.int32)).save(images / "a_int32.tif")
    Image.new("RGB", (1, 300), "white").save(images / "a_sliver.png")  # Qwen2-VL's processor refuses it
    save_truncated(images / "a_cut.jpg")

    def record(record_id, label, image=None):
        return {"id": record_id, "image": f"images/{image or record_id + '.png'}", "label": label}

    train = [
        line(record("a_text", REFUND)),
        line(record("a1", REFUND)),
        line(record("a2", REFUND)),
        line(record("a_int32", REFUND, "a_int32.tif")),
        line(record("b0", RETURN)),
        line(record("b1", RETURN)),
        line(record("c0", CART)),
        line(record("a_cut", REFUND, "a_cut.jpg")),  # line 8: a truncated image
        line(record("b_gbk", RETURN)).replace(RETURN.encode(), RETURN.encode("gbk")),  # line 9: not UTF-8
        line(record("s\udc80", REFUND, "a1.png"), ascii_only=True),  # line 10: a lone surrogate escape
        line(record("a_sliver", REFUND)),  # line 11: a 1x300 image
    ]
    (data / "train.jsonl").write_bytes(b"\n".join(train) + b"\n")
    test = [record("q0", None), record("q1", None), record("q_known", "个人信息页面"), record("q_bad", "不存在的类别")]
    (data / "test.jsonl").write_bytes(b"\n".join(line(item) for item in test) + b"\n")
    return data


def bad_input_config(workdir, data, on_error, max_chars):
    return small_demo_config(
        workdir,
        data={
            "train": str(data / "train.jsonl"),
            "test": str(data / "test.jsonl"),
            "truth": None,
            "on_error": on_error,
        },
        variants=[{"name": "baseline_ocr", "ocr": True}],
        # The shipped config's OCR options: images are never scaled up, so no image can make OCR run for minutes.
        ocr={"shards": 1, "options": {"det_limit_type": "max", "det_limit_side_len": 736}},
        train={"folds": FOLDS},
        prompt={"warn_chars": TEXTLESS_PROMPT, "max_chars": max_chars},
    )


# Each run: data.on_error, prompt.max_chars and the targets. skip goes up to the record accounting; fail
# (the default) stops in ingestion; strict stops building prompts, the text image's prompt being the only
# one longer than the others.
RUNS = {
    "skip": ("skip", 6000, [ACCOUNTING]),
    "fail": ("fail", 6000, ["--keep-going", "results/data/train.parquet", "results/data/test.parquet"]),
    "strict": ("skip", TEXTLESS_PROMPT, ["results/baseline_ocr/prompts.parquet"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The three runs side by side (a Snakemake start is mostly waiting): each one's folder and result."""
    with ThreadPoolExecutor(len(RUNS)) as pool:
        started = {}
        for mode, (on_error, max_chars, targets) in RUNS.items():
            folder = tmp_path_factory.mktemp(mode)
            config = bad_input_config(folder, data_dir, on_error, max_chars)
            started[mode] = folder, pool.submit(run_snakemake, folder, config, *ONE_TRY, *targets, check=False)
        return {mode: (folder, future.result()) for mode, (folder, future) in started.items()}


@pytest.fixture(scope="module")
def skipped(runs):
    """The skip run: (workdir, stages by (stage, split), rejected and flagged records)."""
    workdir, result = runs["skip"]
    assert result.returncode == 0, result.stderr[-8000:]
    stages = json.loads((workdir / ACCOUNTING).read_text(encoding="utf-8"))["stages"]
    issues = pd.read_csv(
        workdir / "results/baseline_ocr/accounting/rejected_and_flagged.csv", dtype=str, keep_default_na=False
    )
    return workdir, {(stage["stage"], stage["split"]): stage for stage in stages}, issues


@pytest.fixture(scope="module")
def failed(runs):
    """The fail run: the log of each split's failed ingestion."""
    workdir, result = runs["fail"]
    assert result.returncode != 0
    return {split: (workdir / f"logs/ingest/{split}.log").read_text(encoding="utf-8") for split in ("train", "test")}


def issue(issues, record_id, stage):
    """The one row of a record at a stage (a record may be flagged at several: no OCR text, and a class of one)."""
    rows = issues[(issues["id"] == record_id) & (issues["stage"] == stage)]
    assert len(rows) == 1, f"{record_id} at {stage}: {issues[issues['id'] == record_id].to_dict('records')}"
    return rows.iloc[0]


# (case, split, id, stage, outcome, reason start, words the reason holds)
SKIPS = [
    ("image OCR cannot read", "train", "a_int32", "ocr", "flagged", "ocr_failed:", "OCR could not read"),
    ("image OCR cannot read: a sliver", "train", "a_sliver", "ingest", "rejected", "image_aspect_ratio:", "1x300"),
    ("empty OCR text", "train", "a1", "ocr", "flagged", "no_text:", "the prompt says (无)"),
    ("single-sample class", "train", "c0", "folds", "flagged", "class_not_trained:", f"class {CART}"),
    ("test label outside the label set", "test", "q_bad", "ingest", "rejected", "unknown_label:", "'不存在的类别'"),
    ("non-UTF-8 line", "train", "b_gbk", "ingest", "rejected", "not_utf8:", "not UTF-8 text (column"),
    ("non-UTF-8 text in valid JSON", "train", "s\\udc80", "ingest", "rejected", "not_utf8:", "field 'id'"),
    ("prompt above prompt.warn_chars", "train", "a_text", "prompts/baseline_ocr", "flagged", "long_prompt:", "warn"),
    ("truncated image", "train", "a_cut", "ingest", "rejected", "image_unreadable:", "truncated"),
]


@pytest.mark.parametrize(
    ("split", "record_id", "stage", "outcome", "kind", "words"), [case[1:] for case in SKIPS], ids=[c[0] for c in SKIPS]
)
def test_skip_mode_reports_each_bad_record_with_its_stage_and_reason(
    skipped, split, record_id, stage, outcome, kind, words
):
    _, stages, issues = skipped
    row = issue(issues, record_id, stage)
    assert (row["split"], row["outcome"]) == (split, outcome)
    assert row["reason"].startswith(kind) and words in row["reason"]
    assert stages[(stage, STAGE_SPLIT.get(stage, split))][outcome] >= 1


STAGE_SPLIT = {"ocr": "all", "prompts/baseline_ocr": "all"}  # the stages that count both splits together


def test_rejected_records_are_named_by_file_and_line(skipped):
    _, _, issues = skipped
    positions = dict(zip(issues["id"], issues["position"], strict=True))
    assert positions["a_cut"] == "train.jsonl line 8" and positions["b_gbk"] == "train.jsonl line 9"
    assert positions["s\\udc80"] == "train.jsonl line 10" and positions["q_bad"] == "test.jsonl line 4"


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("train", "train.jsonl line 8 (id a_cut): image a_cut.jpg is unreadable: image file is truncated"),
        ("train", "train.jsonl line 9 (id b_gbk): is not UTF-8 text (column 56: b'\\xcd\\xcb"),
        ("train", "train.jsonl line 10 (id s\\udc80): field 'id' holds '\\udc80', a lone surrogate"),
        ("train", "train.jsonl line 11 (id a_sliver): image a_sliver.png is 1x300, a side more than 200 times"),
        ("test", "test.jsonl line 4 (id q_bad): label '不存在的类别' is not in the label set"),
    ],
    ids=["truncated image", "non-UTF-8 line", "non-UTF-8 text in valid JSON", "sliver OCR cannot read", "test label"],
)
def test_fail_mode_stops_naming_each_bad_record_and_what_to_do(failed, split, message):
    assert message in failed[split]
    assert "set data.on_error: skip" in failed[split]


def test_fail_mode_passes_a_test_label_inside_the_label_set(failed):
    assert "q_known" not in failed["test"] and "1 bad record(s)" in failed["test"]


def test_non_utf8_files_read_whole_fail_naming_line_and_column(tmp_path):
    # A MIRE JSON or CSV file is decoded at once: the message names where its first bad byte is.
    data = tmp_path / "train.json"
    data.write_bytes(b'[{"id": "r1",\n  "output": "' + RETURN.encode("gbk") + b'"}]')
    with pytest.raises(DataFileError, match=r"not UTF-8 text \(byte 27, line 2 column 14: b'\\xcd\\xcb"):
        ingest_records(data, label_set=[RETURN], labelled=True)
    labels = tmp_path / "labels.yaml"
    labels.write_bytes(f"labels:\n  - name: {RETURN}\n".encode("gbk"))
    with pytest.raises(LabelFileError, match=r"labels.yaml is not UTF-8 text \(byte 18: b'\\xcd\\xcb"):
        load_labels(labels)


def test_records_in_equal_records_out_plus_rejected_at_every_stage(skipped):
    workdir, stages, issues = skipped
    for stage in stages.values():
        assert stage["records_in"] == stage["records_out"] + stage["rejected"], stage
        assert sum(stage["by_reason"].values()) == stage["rejected"] + stage["flagged"], stage
    train, test = stages[("ingest", "train")], stages[("ingest", "test")]
    assert (train["records_in"], train["records_out"], train["rejected"]) == (11, 7, 4)
    assert (test["records_in"], test["records_out"], test["rejected"]) == (4, 3, 1)
    # What one stage lets out, the next takes in: every record kept is in the OCR table, a prompt and a fold.
    for stage in ("ocr", "prompts/baseline_ocr"):
        assert stages[(stage, "all")]["records_in"] == train["records_out"] + test["records_out"] == 10
    assert stages[("folds", "train")]["records_in"] == train["records_out"]
    assert len(pd.read_parquet(workdir / "results/baseline_ocr/prompts.parquet")) == 10
    assert len(pd.read_csv(workdir / "results/folds/folds.csv")) == 7
    assert stages[("ocr", "all")]["by_reason"] == {"no_text": 8, "ocr_failed": 1}  # all but the text image
    # The ingestion tables agree with the accounting's rows for them.
    rejected = pd.read_csv(workdir / "results/data/train_rejected.csv")
    assert sorted(rejected["record"]) == sorted(
        issues.loc[(issues["stage"] == "ingest") & (issues["split"] == "train"), "position"]
    )


def test_k_larger_than_the_smallest_class_deals_it_so_every_fold_still_trains_on_it(skipped):
    workdir, _, issues = skipped
    report = json.loads((workdir / "results/folds/report.json").read_text(encoding="utf-8"))
    assert report["classes_smaller_than_n_folds"] == {CART: 1, RETURN: 2}
    folds = pd.read_csv(workdir / "results/folds/folds.csv")
    returns = folds[folds["label"] == RETURN]
    assert returns["fold"].nunique() == 2  # each held out once, in distinct folds
    for fold in range(FOLDS):
        assert (returns["fold"] != fold).any(), f"fold {fold} trains without {RETURN}"
    assert not issues.loc[issues["stage"] == "folds", "id"].isin(["b0", "b1"]).any()  # reported, not flagged
    log = (workdir / "logs/folds/assign_folds.log").read_text(encoding="utf-8")
    assert f"fewer records than train.folds = {FOLDS}" in log and "lower train.folds or add records" in log


def test_a_single_sample_class_is_named_with_the_fold_that_trains_without_it(skipped):
    workdir, _, _ = skipped
    report = json.loads((workdir / "results/folds/report.json").read_text(encoding="utf-8"))
    fold = int(pd.read_csv(workdir / "results/folds/folds.csv").set_index("id").loc["c0", "fold"])
    assert report["classes_missing_from_a_training_part"] == {CART: {"fold": fold, "ids": ["c0"]}}
    log = (workdir / "logs/folds/assign_folds.log").read_text(encoding="utf-8")
    assert f"class {CART}: fold {fold} holds out all its records (c0)" in log and "merge or drop it" in log


def test_label_correction_does_not_flag_the_only_record_of_a_class():
    # c0's fold model never saw 购物车页面, so it predicts another class; that is no evidence c0 is mislabelled.
    labels = [REFUND, CART]
    oof = pd.DataFrame({"id": ["a1", "a2", "a3", "c0"], f"p::{REFUND}": 0.9, f"p::{CART}": 0.1})
    oof["given_label"] = [REFUND, REFUND, CART, CART]
    assert set(find_label_issues(oof, labels, "disagreement")["id"]) == {"a3", "c0"}  # a class of two: both flagged
    oof.loc[2, "given_label"] = REFUND
    assert find_label_issues(oof, labels, "disagreement").empty


def test_a_prompt_above_the_hard_limit_stops_the_run_naming_the_record(runs):
    workdir, result = runs["strict"]
    assert result.returncode != 0
    log = (workdir / "logs/prompts/baseline_ocr.log").read_text(encoding="utf-8")
    assert f"variant baseline_ocr: 1 prompt(s) above prompt.max_chars = {TEXTLESS_PROMPT}: a_text (" in log
    assert "or raise prompt.max_chars" in log
    assert not (workdir / "results/baseline_ocr/prompts.parquet").exists()
