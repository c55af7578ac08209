import json

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from vlmflow.data.labels import Label
from vlmflow.recipe.final_training import (
    balance_classes,
    build_final_training_set,
    final_training_records,
    final_training_set_from_files,
    write_final_training_set,
)

from helpers.variants import SCHEMA, make_variant

LABELS = [Label("退款页面", "退款"), Label("退货页面", "退货"), Label("支付页面", "支付")]


def records(ids, labels, prefix="img"):
    return pd.DataFrame(
        {
            "id": ids,
            "image_path": [f"/{prefix}/{i}.jpg" for i in ids],
            "label": pd.array(labels, dtype="string"),
            "image_sha256": [f"sha-{i}" for i in ids],
            "width": 10,
            "height": 20,
        }
    )


def test_pseudo_labelled_test_records_join_the_training_records_with_their_source():
    train = records(["a", "b"], ["退款页面", "支付页面"])
    test = records(["t1", "t2"], [None, None], prefix="test")
    pseudo = pd.DataFrame({"id": ["t2"], "label": ["退货页面"], "confidence": [0.9], "agreeing_folds": [2]})
    combined = final_training_records(train, pseudo, test)
    assert list(combined["id"]) == ["a", "b", "t2"] and list(combined["source"]) == ["train", "train", "pseudo"]
    assert combined.set_index("id").loc["t2", "image_path"] == "/test/t2.jpg"
    assert (combined["split"] == "train").all()
    assert len(final_training_records(train, None, None)) == 2


def test_classes_below_the_floor_are_oversampled_to_it_and_no_others():
    labels = pd.Series(["退款页面"] * 5 + ["退货页面"] * 2 + ["支付页面"])
    table = pd.DataFrame({"id": [f"r{i}" for i in range(8)]})
    balanced, report = balance_classes(table, labels, floor=4, seed=0)
    assert report["per_class_before"] == {"退款页面": 5, "退货页面": 2, "支付页面": 1}
    assert report["per_class_after"] == {"退款页面": 5, "退货页面": 4, "支付页面": 4}
    assert report["oversampled_records"] == 5 and len(balanced) == 13
    assert set(balanced["id"][8:]) <= {"r5", "r6", "r7"}  # repeats of the small classes only
    assert (balanced["id"] == "r7").sum() == 4
    unchanged, report = balance_classes(table, labels, floor=0, seed=0)
    assert len(unchanged) == 8 and report["oversampled_records"] == 0


def test_final_training_set_rebuilds_targets_from_the_new_labels_and_mixes_general_records():
    train = records(["a", "b", "c"], ["退款页面", "退款页面", "支付页面"])  # "c" was corrected to 支付页面
    combined = final_training_records(train)
    variant = make_variant("reason", ocr=True, reason=True)
    general = [
        {"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}]} for i in range(20)
    ]
    prompts, sample, report = build_final_training_set(
        combined,
        {"sha-a": "申请退款"},
        variant,
        LABELS,
        class_floor=2,
        general_records=general,
        general_ratio=0.5,
        seed=0,
    )
    targets = prompts.groupby("id")["target"].first()
    assert '"所属类别": "支付页面"' in targets["c"] and '"所属类别": "退款页面"' in targets["a"]
    by_id = prompts.groupby("id")["prompt"].first()
    assert "OCR文字:申请退款" in by_id["a"] and "OCR文字:(无)" in by_id["b"]  # OCR text is found by image sha256
    assert len(prompts) == 4 and report["oversampled_records"] == 1  # 支付页面 raised to the floor of 2
    assert len(sample) == 2 == report["general_records"]  # round(0.5 * 4)
    assert report["given_or_corrected"] == 3 and report["pseudo"] == 0


@pytest.fixture
def training_files(tmp_path):
    """A final fit's input files as rule build_final_training_set names them, and its params."""
    records(["a", "b", "c"], ["退款页面", "退款页面", "支付页面"]).to_parquet(tmp_path / "train.parquet", index=False)
    records(["t1", "t2"], [None, None], prefix="test").to_parquet(tmp_path / "test.parquet", index=False)
    pseudo = pd.DataFrame({"id": ["t2"], "label": ["退货页面"], "confidence": [0.9], "agreeing_folds": [2]})
    pseudo.to_csv(tmp_path / "pseudo.csv", index=False)
    pd.DataFrame({"image_sha256": ["sha-a"], "text": ["申请退款"]}).to_parquet(tmp_path / "ocr.parquet", index=False)
    general = [{"instruction": str(i), "output": "x"} for i in range(20)]
    (tmp_path / "general.json").write_text(json.dumps(general), encoding="utf-8")
    labels = {"labels": [{"name": label.name, "description": label.description} for label in LABELS]}
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump(labels, allow_unicode=True), encoding="utf-8")
    config = {"variants": [{"name": "baseline_ocr", "ocr": True}]}
    validate(config, str(SCHEMA))
    files = {
        "records": tmp_path / "train.parquet",
        "test_records": tmp_path / "test.parquet",
        "pseudo_labels": tmp_path / "pseudo.csv",
        "ocr": tmp_path / "ocr.parquet",
        "teacher_reasons": [],
        "teacher_descriptions": [],
        "general": [tmp_path / "general.json"],
        "labels": tmp_path / "labels.yaml",
    }
    params = {"variant": config["variants"][0], "class_floor": 2, "general_format": "alpaca", "general_ratio": 0.5}
    return files, params | {"seed": 0, "warn_chars": 1000, "max_chars": 2000}


def test_the_final_training_set_is_built_from_the_rules_files_and_written(training_files, tmp_path):
    files, params = training_files
    prompts, general, report = final_training_set_from_files(**files, **params)
    assert report["given_or_corrected"] == 3 and report["pseudo"] == 1  # t2 pseudo-labelled
    assert sorted(prompts["id"].unique()) == ["a", "b", "c", "t2"] and report["oversampled_records"] == 2
    assert "OCR文字:申请退款" in prompts.set_index("id").loc["a", "prompt"]
    assert len(general) == report["general_records"] > 0
    paths = [tmp_path / name for name in ("train_prompts.parquet", "general_records.json", "training_set.json")]
    write_final_training_set(prompts, general, report, *paths)
    assert pd.read_parquet(paths[0]).equals(prompts.reset_index(drop=True))
    assert json.loads(paths[1].read_text(encoding="utf-8")) == general
    assert json.loads(paths[2].read_text(encoding="utf-8")) == report
    without = final_training_set_from_files(**files | {"pseudo_labels": [], "general": []}, **params)
    assert without[2]["pseudo"] == 0 and without[1] == []


def test_a_general_data_file_in_another_format_is_refused(training_files):
    files, params = training_files
    with pytest.raises(ValueError, match="instruction|conversations|messages"):
        final_training_set_from_files(**files, **params | {"general_format": "sharegpt"})
