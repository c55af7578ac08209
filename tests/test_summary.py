import math

import pytest

from vlmflow.evaluation.summary import (
    ablation_row,
    ablation_table,
    difference_whiskers,
    plot_ablation,
    summary_metrics,
    to_markdown,
)


def rows():
    correction = {"flagged": 12, "precision": 0.25, "recall": 1.0}
    finals = {"average_folds": {"test_weighted_f1": 0.6}, "retrain_correction_pseudo": {"test_weighted_f1": 0.8}}
    return [
        ablation_row(
            "baseline",
            {"oof_weighted_f1": 0.1, "test_weighted_f1": 0.2},
            correction,
            finals,
            "retrain_correction_pseudo",
        ),
        ablation_row(
            "baseline_ocr",
            {"oof_weighted_f1": 0.7, "test_weighted_f1": 0.75},
            correction,
            finals,
            "retrain_correction_pseudo",
        ),
    ]


def test_the_table_has_one_row_per_variant_and_a_column_per_final_model():
    table = ablation_table(rows())
    assert list(table["variant"]) == ["baseline", "baseline_ocr"]
    assert list(table.columns) == [
        "variant",
        "oof_weighted_f1",
        "noise_flagged",
        "noise_precision",
        "noise_recall",
        "test_weighted_f1.fold_ensemble",
        "test_weighted_f1.average_folds",
        "test_weighted_f1.retrain_correction_pseudo",
        "submitted",
    ]
    markdown = to_markdown(table)
    assert "test wF1: retrain, correction + pseudo" in markdown and "| baseline_ocr " in markdown
    assert "0.750" in markdown


def test_without_truth_the_test_columns_are_dropped_and_metrics_skip_empty_cells():
    no_truth = [ablation_row("baseline", {"oof_weighted_f1": 0.3}, {}, {"average_folds": {"n": 12}}, "average_folds")]
    table = ablation_table(no_truth)
    assert list(table.columns) == ["variant", "oof_weighted_f1", "submitted"]
    assert summary_metrics(table) == {"baseline.oof_weighted_f1": 0.3}
    metrics = summary_metrics(ablation_table(rows()))
    assert metrics["baseline_ocr.test_weighted_f1.retrain_correction_pseudo"] == 0.8
    assert not any(math.isnan(value) for value in metrics.values())


def test_the_chart_is_written(tmp_path):
    plot_ablation(ablation_table(rows()), tmp_path / "summary.png")
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def test_differences_from_the_no_step_model_show_their_interval_and_mark_the_ones_that_clear_it(tmp_path):
    finals = {
        "retrain_none": {"test_weighted_f1": 0.60},
        "retrain_correction": {
            "test_weighted_f1": 0.62,
            "test_weighted_f1_minus_none": 0.02,
            "test_weighted_f1_minus_none_low": -0.03,
            "test_weighted_f1_minus_none_high": 0.07,
        },
        "retrain_correction_pseudo": {
            "test_weighted_f1": 0.75,
            "test_weighted_f1_minus_none": 0.15,
            "test_weighted_f1_minus_none_low": 0.08,
            "test_weighted_f1_minus_none_high": 0.22,
        },
    }
    row = ablation_row("baseline", {"oof_weighted_f1": 0.5}, {}, finals, "retrain_correction_pseudo")
    assert row["test_weighted_f1_minus_none.retrain_correction"] == "+0.020 [-0.030, +0.070]"
    assert row["test_weighted_f1_minus_none.retrain_correction_pseudo"] == "+0.150 [+0.080, +0.220] *"
    markdown = to_markdown(ablation_table([row]))
    assert "vs no step, 95% interval: retrain, correction + pseudo" in markdown
    assert "paired bootstrap interval" in markdown
    assert "baseline.test_weighted_f1_minus_none.retrain_correction" not in summary_metrics(ablation_table([row]))
    whiskers = difference_whiskers({"baseline": finals})
    assert set(whiskers) == {
        ("baseline", "test_weighted_f1.retrain_correction"),
        ("baseline", "test_weighted_f1.retrain_correction_pseudo"),
    }
    assert whiskers[("baseline", "test_weighted_f1.retrain_correction")] == pytest.approx((0.05, 0.05))
    plot_ablation(ablation_table([row]), tmp_path / "plain.png")
    plot_ablation(ablation_table([row]), tmp_path / "whiskers.png", whiskers)
    assert (tmp_path / "whiskers.png").read_bytes() != (tmp_path / "plain.png").read_bytes()
