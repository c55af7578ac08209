import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from vlmflow.evaluation.metrics import (
    evaluate_variant,
    mean_fold_probabilities,
    per_class_report,
    plot_confusion_matrix,
    read_out_of_fold,
    write_variant_evaluation,
)

LABELS = ["退款页面", "退货页面", "支付页面"]


def predictions(ids, probabilities):
    table = pd.DataFrame(probabilities, columns=[f"p::{label}" for label in LABELS])
    table.insert(0, "id", ids)
    table["predicted"] = [LABELS[i] for i in np.argmax(probabilities, axis=1)]
    return table


def test_out_of_fold_metrics_use_the_given_labels_and_the_competition_f1():
    fold0 = predictions(["a", "b"], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    fold1 = predictions(["c", "d"], [[0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    given = pd.DataFrame({"id": list("abcd"), "label": ["退款页面", "退货页面", "支付页面", "退货页面"]})
    test = [predictions(["t"], [[0.5, 0.4, 0.1]]), predictions(["t"], [[0.1, 0.2, 0.7]])]
    metrics, per_fold, oof, mean_test = evaluate_variant({0: fold0, 1: fold1}, test, given, truth=None)
    expected = f1_score(given["label"], ["退款页面", "退货页面", "支付页面", "退款页面"], average="weighted")
    assert metrics["oof_weighted_f1"] == pytest.approx(expected)
    assert metrics["oof_accuracy"] == 0.75
    assert per_fold["accuracy"].tolist() == [1.0, 0.5]
    assert list(oof["fold"]) == [0, 0, 1, 1]
    assert mean_test.loc[0, "predicted"] == "支付页面"  # mean of (0.5,0.4,0.1) and (0.1,0.2,0.7)


def test_truth_adds_test_metrics_and_out_of_fold_metrics_against_true_labels():
    fold0 = predictions(["a", "b"], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    given = pd.DataFrame({"id": ["a", "b"], "label": ["退款页面", "支付页面"]})  # b's label was flipped
    truth = pd.DataFrame(
        {
            "id": ["a", "b", "t"],
            "split": ["train", "train", "test"],
            "label": ["退款页面", "退货页面", "支付页面"],
        }
    )
    metrics, *_ = evaluate_variant({0: fold0}, [predictions(["t"], [[0.1, 0.1, 0.8]])], given, truth)
    assert metrics["oof_accuracy"] == 0.5 and metrics["oof_vs_truth_accuracy"] == 1.0
    assert metrics["test_accuracy"] == 1.0 and metrics["test_n"] == 1


def test_mean_probabilities_keep_rows_summing_to_one():
    tables = [
        predictions(["x", "y"], [[0.2, 0.3, 0.5], [1, 0, 0]]),
        predictions(["x", "y"], [[0.4, 0.5, 0.1], [0, 1, 0]]),
    ]
    mean = mean_fold_probabilities(tables)
    assert np.allclose(mean.filter(like="p::").sum(axis=1), 1.0)
    assert mean.set_index("id").loc["x", "p::退货页面"] == pytest.approx(0.4)


def test_per_class_report_and_confusion_matrix_image(tmp_path):
    truth = pd.Series(["退款页面", "退货页面", "支付页面", "支付页面"])
    predicted = pd.Series(["退款页面", "支付页面", "支付页面", "支付页面"])
    report = per_class_report(truth, predicted, LABELS)
    assert report.set_index("label").loc["支付页面", "precision"] == pytest.approx(2 / 3)
    assert report["support"].tolist() == [1, 1, 2]
    plot_confusion_matrix(truth, predicted, LABELS, tmp_path / "cm.png", "demo")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_set_metrics_score_predictions_against_the_truth():
    from vlmflow.evaluation.metrics import test_set_metrics

    submission = pd.DataFrame({"id": ["t1", "t2"], "predict": ["退款页面", "支付页面"]})
    truth = pd.DataFrame({"id": ["t2", "t1", "x"], "split": "test", "label": ["退货页面", "退款页面", "支付页面"]})
    assert test_set_metrics(submission, None, column="predict") == {"n": 2}
    metrics = test_set_metrics(submission, truth, column="predict")
    assert metrics["test_accuracy"] == 0.5 and metrics["test_n"] == 2


def test_a_variants_evaluation_is_read_by_fold_and_written_to_its_outputs(tmp_path):
    given = pd.DataFrame({"id": list("abcd"), "label": ["退款页面", "退货页面", "支付页面", "退货页面"]})
    paths = []
    for fold, table in {
        1: predictions(["c", "d"], [[0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]),
        0: predictions(["a", "b"], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]),
    }.items():
        (tmp_path / f"fold{fold}").mkdir()
        paths.append(str(tmp_path / f"fold{fold}" / "oof_probs.parquet"))
        table.to_parquet(paths[-1], index=False)
    out_of_fold = read_out_of_fold(paths)
    assert list(out_of_fold) == [1, 0] and list(out_of_fold[0]["id"]) == ["a", "b"]
    evaluation = evaluate_variant(out_of_fold, [predictions(["t"], [[0.5, 0.4, 0.1]])], given, truth=None)
    names = ["report.csv", "confusion_matrix.png", "out_of_fold.parquet", "test.parquet", "fold_metrics.csv"]
    outputs = SimpleNamespace(**{name.split(".")[0]: tmp_path / name for name in [*names, "metrics.json"]})
    outputs.fold_reports = [tmp_path / f"fold{fold}_report.csv" for fold in (0, 1)]
    outputs.fold_matrices = [tmp_path / f"fold{fold}_matrix.png" for fold in (0, 1)]
    write_variant_evaluation(evaluation, LABELS, "baseline", outputs)
    assert json.loads(outputs.metrics.read_text(encoding="utf-8")) == pytest.approx(evaluation[0])
    assert pd.read_csv(outputs.fold_metrics)["fold"].tolist() == [0, 1]
    assert pd.read_parquet(outputs.out_of_fold)["id"].tolist() == ["c", "d", "a", "b"]
    assert pd.read_csv(outputs.report)["label"].tolist() == LABELS
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in [outputs.confusion_matrix, *outputs.fold_matrices])
    assert len(pd.read_csv(outputs.fold_reports[1])) == len(LABELS)
    with pytest.raises(ValueError, match="longer"):  # zip(strict=True): a report for each fold, no more
        write_variant_evaluation(
            evaluation, LABELS, "baseline", SimpleNamespace(**vars(outputs) | {"fold_reports": []})
        )
