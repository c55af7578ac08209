import json

import numpy as np
import pandas as pd
import pytest

from vlmflow.recipe.correction import (
    ISSUE_COLUMNS,
    apply_corrections,
    correct_labels,
    find_label_issues,
    noise_detection_scores,
    read_overrides,
    write_override_template,
)

# The last label never occurs as a given label, like MIRE's two classes absent from train.
LABELS = ["退款页面", "退货页面", "支付页面", "个人信息页面"]
FLIPS = {"r00": 1, "r10": 2, "r20": 0}  # planted flips: id -> the wrong label index they were given
HARD = "r05"  # labelled right, but its fold model leans (0.5) to the wrong class


@pytest.fixture
def demo():
    """30 records, 10 per true class; the fold models are confident except on HARD."""
    ids = [f"r{i:02d}" for i in range(30)]
    true = np.repeat([0, 1, 2], 10)
    given = true.copy()
    probabilities = np.full((30, 4), 0.0)
    for i, record in enumerate(ids):
        confidence = 0.7 + 0.05 * (i % 5)  # 0.70 .. 0.90, so thresholds are not all ties
        if record in FLIPS:
            given[i] = FLIPS[record]
            confidence = 0.9  # the fold model is sure of the true class
        probabilities[i] = (1 - confidence) / 3
        probabilities[i, true[i]] = confidence
    probabilities[int(HARD[1:])] = [0.4, 0.5, 0.05, 0.05]
    oof = pd.DataFrame(probabilities, columns=[f"p::{label}" for label in LABELS])
    oof.insert(0, "id", ids)
    oof["given_label"] = [LABELS[k] for k in given]
    train = pd.DataFrame(
        {"id": ids, "label": oof["given_label"], "image_path": [f"images/{record}.jpg" for record in ids]}
    )
    truth = pd.DataFrame(
        {
            "id": ids + ["t0"],
            "split": ["train"] * 30 + ["test"],
            "label": [LABELS[k] for k in true] + [LABELS[0]],
            "given_label": list(oof["given_label"]) + [LABELS[0]],
            "flipped": [record in FLIPS for record in ids] + [True],  # a test row never counts
        }
    )
    return oof, train, truth


def test_disagreement_flags_the_flips_and_the_hard_record(demo):
    oof, _, truth = demo
    issues = find_label_issues(oof, LABELS, "disagreement")
    assert list(issues.columns) == ISSUE_COLUMNS
    assert set(issues["id"]) == {*FLIPS, HARD}
    assert issues["confidence"].is_monotonic_decreasing
    assert issues.loc[issues["id"] == "r00", ["given", "proposed"]].values.tolist() == [["退货页面", "退款页面"]]
    scores = noise_detection_scores(issues, truth)
    assert scores == {
        "precision": 0.75,
        "recall": 1.0,
        "proposal_accuracy": 0.75,
        "flagged": 4,
        "planted": 3,
        "found": 3,
    }


def test_min_confidence_drops_the_unsure_proposal(demo):
    oof, _, truth = demo
    issues = find_label_issues(oof, LABELS, "disagreement", min_confidence=0.6)
    assert set(issues["id"]) == set(FLIPS)
    assert noise_detection_scores(issues, truth)["precision"] == 1.0


def test_confident_learning_finds_the_flips_with_an_absent_class(demo):
    oof, _, truth = demo
    issues = find_label_issues(oof, LABELS, "confident_learning")
    assert set(issues["id"]) == set(FLIPS)
    assert set(issues["method"]) == {"confident_learning"}
    assert noise_detection_scores(issues, truth)["recall"] == 1.0


def test_confident_learning_never_proposes_a_class_absent_from_the_given_labels(demo):
    oof, _, _ = demo
    oof.loc[oof["id"] == "r15", [f"p::{label}" for label in LABELS]] = [0.0, 0.05, 0.05, 0.9]
    assert "r15" in set(find_label_issues(oof, LABELS, "disagreement")["id"])
    assert "r15" not in set(find_label_issues(oof, LABELS, "confident_learning")["id"])


def test_confident_learning_names_given_labels_without_a_probability_column(demo):
    oof, _, _ = demo
    oof.loc[3, "given_label"] = "换货页面"
    with pytest.raises(ValueError, match="换货页面"):
        find_label_issues(oof, LABELS, "confident_learning")


def test_none_is_empty_and_unknown_method_names_the_valid_ones(demo):
    oof, _, truth = demo
    issues = find_label_issues(oof, LABELS, "none")
    assert issues.empty and list(issues.columns) == ISSUE_COLUMNS
    assert noise_detection_scores(issues, truth)["precision"] == 0.0
    with pytest.raises(ValueError, match="confident_learning"):
        find_label_issues(oof, LABELS, "vote")


def write_overrides(path, lines):
    path.write_text("id,action,label\n" + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path


OVERRIDES = ["r00,accept,", "r10,reject,", "r20,relabel,退货页面", "", "r29,relabel,个人信息页面"]


@pytest.mark.parametrize(
    ("mode", "expected", "r05_decision"),
    [
        ("auto", {"r00": "退款页面", "r10": "支付页面", "r20": "退货页面", "r05": "退货页面"}, "applied"),
        ("review", {"r00": "退款页面", "r10": "支付页面", "r20": "退货页面", "r05": "退款页面"}, "not_reviewed"),
    ],
)
def test_overrides_accept_reject_and_relabel(demo, tmp_path, mode, expected, r05_decision):
    oof, train, _ = demo
    issues = find_label_issues(oof, LABELS, "disagreement")
    overrides = read_overrides(write_overrides(tmp_path / "o.csv", OVERRIDES), LABELS)
    corrected, decisions = apply_corrections(train, issues, overrides, mode)
    assert len(corrected) == len(train) and list(corrected["id"]) == list(train["id"])
    labels = corrected.set_index("id")["label"]
    assert {record: labels[record] for record in expected} == expected
    assert labels["r29"] == "个人信息页面"  # relabelled although not flagged
    unchanged = set(train["id"]) - {*expected, "r29"}
    assert (labels[sorted(unchanged)] == train.set_index("id")["label"][sorted(unchanged)]).all()
    decided = decisions.set_index("id")
    assert decided["decision"].to_dict() == {
        "r00": "applied", "r10": "rejected", "r20": "relabelled", "r05": r05_decision, "r29": "relabelled"
    }  # fmt: skip
    assert decided.loc["r05", "source"] == "method" and decided.loc["r10", "source"] == "override"


def test_override_of_an_unknown_id_is_named(demo, tmp_path):
    oof, train, _ = demo
    overrides = read_overrides(write_overrides(tmp_path / "o.csv", ["nope,reject,"]), LABELS)
    with pytest.raises(ValueError, match="nope"):
        apply_corrections(train, find_label_issues(oof, LABELS, "none"), overrides, "auto")
    with pytest.raises(ValueError, match="'auto', 'review'"):
        apply_corrections(train, find_label_issues(oof, LABELS, "none"), overrides.iloc[:0], "manual")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["r00,accept,", "r01,approve,"], "line 3: action 'approve'"),
        (["r00,relabel,换货页面"], "line 2: relabel to '换货页面'"),
        (["r00,accept,退款页面"], "line 2: label is only read with action relabel"),
        (["r00,accept,", "r00,reject,"], r"more than once: \['r00'\] \(lines \[2, 3\]\)"),
    ],
)
def test_bad_override_rows_are_named(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_overrides(write_overrides(tmp_path / "o.csv", lines), LABELS)


def test_override_template_is_header_only_and_never_overwritten(tmp_path):
    path = tmp_path / "corrections" / "overrides.csv"
    assert read_overrides(path, LABELS).empty  # a missing file means no overrides
    write_override_template(path)
    assert path.read_text(encoding="utf-8") == "id,action,label\n"
    write_overrides(path, ["r00,reject,"])
    write_override_template(path)
    assert read_overrides(path, LABELS)["action"].tolist() == ["reject"]


def test_correction_summary_counts_applied_and_adds_noise_scores_with_truth():
    from vlmflow.recipe.correction import correction_summary

    issues = pd.DataFrame({"id": ["a", "b"], "given": ["x", "y"], "proposed": ["y", "x"], "confidence": [0.9, 0.8]})
    decisions = pd.DataFrame({"id": ["a", "b"], "decision": ["applied", "rejected"]})
    assert correction_summary(issues, decisions, None) == {"flagged": 2, "applied": 1}
    truth = pd.DataFrame(
        {"id": ["a", "b", "c"], "split": "train", "label": ["y", "y", "x"], "flipped": [True, False, True]}
    )
    summary = correction_summary(issues, decisions, truth)
    assert summary["precision"] == 0.5 and summary["recall"] == 0.5 and summary["planted"] == 2


def test_the_correction_stage_in_one_call_flags_applies_overrides_reviews_and_counts(demo, tmp_path):
    oof, train, truth = demo
    overrides = write_overrides(tmp_path / "o.csv", OVERRIDES)
    page = tmp_path / "review" / "label_review.html"
    ocr_text = {"r00": "退款成功"}
    correction = correct_labels(
        train,
        oof,
        LABELS,
        method="disagreement",
        min_confidence=0.0,
        overrides_path=str(overrides),
        apply="auto",
        ocr_text=ocr_text,
        review_html=page,
        truth=truth,
    )
    # The same as the steps one by one.
    issues = find_label_issues(oof, LABELS, "disagreement")
    corrected, decisions = apply_corrections(train, issues, read_overrides(overrides, LABELS), "auto")
    assert correction.issues.equals(issues) and correction.decisions.equals(decisions)
    assert correction.corrected.equals(corrected)
    assert correction.summary["flagged"] == len(issues) == page.read_text(encoding="utf-8").count("<img")
    assert correction.summary["applied"] == 4  # r00 and r05 applied, r20 and r29 relabelled; r10 rejected
    assert correction.summary == correction.summary | noise_detection_scores(issues, truth)
    assert "退款成功" in page.read_text(encoding="utf-8")
    paths = [tmp_path / name for name in ("corrections.csv", "decisions.csv", "corrected.parquet", "scores.json")]
    correction.write(*paths)
    assert pd.read_csv(paths[0], dtype=str)["id"].tolist() == correction.issues["id"].tolist()
    assert pd.read_csv(paths[1])["decision"].tolist() == correction.decisions["decision"].tolist()
    assert pd.read_parquet(paths[2]).equals(correction.corrected)
    assert json.loads(paths[3].read_text(encoding="utf-8")) == pytest.approx(correction.summary)
    assert paths[3].read_text(encoding="utf-8").endswith("}\n")
