"""Record accounting on 3-record tables: counts per stage, flags, and a lost record named."""

import json

import pandas as pd
import pytest

from vlmflow.data.accounting import (
    IngestedSplit,
    RecordsLostError,
    account_records,
    read_ingested,
    write_accounting,
)


def ingested(ids, labels, rejected=()):
    records = pd.DataFrame(
        {"id": ids, "label": labels, "image_path": [f"/d/{i}.png" for i in ids], "image_sha256": [f"s{i}" for i in ids]}
    )
    table = pd.DataFrame(
        [{"record": f"t.jsonl line {n}", "id": i, "reason": "image_not_found: gone"} for n, i in rejected],
        columns=["record", "id", "reason"],
    )
    counts = {"records_in": len(ids) + len(rejected), "records_out": len(ids), "rejected": len(rejected)}
    return IngestedSplit(records, table, counts)


@pytest.fixture
def stages():
    train = ingested(["r1", "r2", "r3"], ["a", "a", "b"], rejected=[(4, "r4")])
    test = ingested(["t1"], [None])
    ocr = pd.DataFrame({"image_sha256": ["sr1", "sr2", "sr3", "st1"], "text": ["x", "", "y", "z"], "error": ""})
    prompts = pd.DataFrame({"id": ["r1", "r2", "r3", "t1"], "n_chars": [10, 10, 30, 10]})
    folds = pd.DataFrame({"id": ["r1", "r2", "r3"], "label": ["a", "a", "b"], "fold": [0, 1, 0]})
    report = {"classes_missing_from_a_training_part": {"b": {"fold": 0, "ids": ["r3"]}}}
    return {"train": train, "test": test}, ocr, prompts, folds, report


def test_every_stage_counts_in_out_rejected_and_flagged(stages):
    splits, ocr, prompts, folds, report = stages
    counted, issues = account_records(splits, ocr, "v", prompts, folds, report, warn_chars=20)
    summary = {
        (s["stage"], s["split"]): (s["records_in"], s["records_out"], s["rejected"], s["flagged"]) for s in counted
    }
    assert summary == {
        ("ingest", "train"): (4, 3, 1, 0),
        ("ingest", "test"): (1, 1, 0, 0),
        ("ocr", "all"): (4, 4, 0, 1),
        ("prompts/v", "all"): (4, 4, 0, 1),
        ("folds", "train"): (3, 3, 0, 1),
    }
    assert issues[["stage", "id", "outcome"]].values.tolist() == [
        ["ingest", "r4", "rejected"],
        ["ocr", "r2", "flagged"],
        ["prompts/v", "r3", "flagged"],
        ["folds", "r3", "flagged"],
    ]
    assert issues.loc[0, "position"] == "t.jsonl line 4" and issues.loc[1, "reason"].startswith("no_text:")
    assert next(s for s in counted if s["stage"] == "ocr")["with_text"] == 3  # r2's image had none


def test_an_ocr_error_is_the_reason_and_no_ocr_table_means_no_ocr_stage(stages):
    splits, ocr, prompts, folds, report = stages
    ocr.loc[0, "error"] = "error: cannot convert"
    _, issues = account_records(splits, ocr, "v", prompts, folds, report, warn_chars=20)
    assert (
        "ocr_failed: OCR could not read the image (error: cannot convert)" in issues.set_index("id").loc["r1", "reason"]
    )
    counted, _ = account_records(splits, None, "v", prompts, folds, report, warn_chars=20)
    assert "ocr" not in {stage["stage"] for stage in counted}


@pytest.mark.parametrize("stage", ["ocr", "prompts/v", "folds"])
def test_a_record_lost_between_stages_fails_naming_it(stages, stage):
    splits, ocr, prompts, folds, report = stages
    if stage == "ocr":
        ocr = ocr[ocr["image_sha256"] != "sr2"]
    elif stage == "folds":
        folds = folds[folds["id"] != "r2"]
    else:
        prompts = prompts[prompts["id"] != "r2"]
    with pytest.raises(RecordsLostError, match=rf"stage {stage}: 1 record\(s\) went in .*: r2;"):
        account_records(splits, ocr, "v", prompts, folds, report, warn_chars=20)


def test_ingest_counts_that_disagree_with_its_tables_fail(stages):
    splits, ocr, prompts, folds, report = stages
    splits["train"].counts["records_in"] = 5
    with pytest.raises(RecordsLostError, match=r"stage ingest \(train\): the counts"):
        account_records(splits, ocr, "v", prompts, folds, report, warn_chars=20)


def test_the_accounting_reads_each_splits_files_and_writes_stages_and_issues(stages, tmp_path):
    splits, ocr, prompts, folds, report = stages
    files = {"records": [], "rejected": [], "counts": []}
    for name, split in splits.items():
        files["records"].append(tmp_path / f"{name}.parquet")
        files["rejected"].append(tmp_path / f"{name}_rejected.csv")
        files["counts"].append(tmp_path / f"{name}_counts.json")
        split.records.to_parquet(files["records"][-1], index=False)
        split.rejected.to_csv(files["rejected"][-1], index=False)
        files["counts"][-1].write_text(json.dumps(split.counts), encoding="utf-8")
    read = read_ingested(**files)
    assert list(read) == ["train", "test"] and read["train"].counts == splits["train"].counts
    assert list(read["train"].rejected["id"]) == ["r4"]
    counted, issues = account_records(read, ocr, "baseline_ocr", prompts, folds, report, warn_chars=20)
    write_accounting(counted, issues, tmp_path / "stages.json", tmp_path / "issues.csv")
    assert json.loads((tmp_path / "stages.json").read_text(encoding="utf-8")) == {"stages": counted}
    assert len(pd.read_csv(tmp_path / "issues.csv")) == len(issues) > 0
    with pytest.raises(ValueError):
        read_ingested(files["records"], files["rejected"][:1], files["counts"])
