import math

import pytest

from vlmflow.evaluation.summary import (
    ablation_row,
    ablation_table,
    difference_whiskers,
    general_ability_note,
    plot_ablation,
    summary_metrics,
    to_markdown,
    with_general_ability,
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


def test_general_ability_is_a_column_per_final_model_with_a_footnote_on_mixing(tmp_path):
    general = {
        "baseline": {
            "average_folds": {"n": 40, "correct": 2, "accuracy": 0.05},
            "retrain_correction_pseudo": {"n": 40, "correct": 30, "accuracy": 0.75},
        },
        "baseline_ocr": {
            "average_folds": {"n": 40, "correct": 0, "accuracy": 0.0},
            "retrain_correction_pseudo": {"n": 40, "correct": 20, "accuracy": 0.5},
        },
    }
    mixed = {"baseline": {"retrain_correction_pseudo": 52}, "baseline_ocr": {"retrain_correction_pseudo": 50}}
    table = ablation_table([with_general_ability(row, general[row["variant"]]) for row in rows()])
    assert list(table["general_accuracy.retrain_correction_pseudo"]) == [0.75, 0.5]
    assert list(table["general_accuracy.average_folds"]) == [0.05, 0.0]
    assert summary_metrics(table)["baseline.general_accuracy.retrain_correction_pseudo"] == 0.75
    markdown = to_markdown(table) + general_ability_note(general, mixed, {"n": 40, "correct": 1, "accuracy": 0.025})
    assert "general acc: retrain, correction + pseudo" in markdown and "general acc: averaged folds" in markdown
    assert "the 40 held-out general records" in markdown
    mixing = "- trained with general data mixed in (general records in each variant's fit): "
    assert mixing + "retrain, correction + pseudo (baseline: 52, baseline_ocr: 50)\n" in markdown
    assert "- trained without general data: averaged folds (the weight average of the fold models" in markdown
    assert "- the untuned base model, for reference: 0.025 (1 of 40)" in markdown
    plot_ablation(table, tmp_path / "summary.png")  # the chart keeps to weighted F1


def test_without_held_out_general_records_there_is_no_column_and_no_footnote():
    table = ablation_table([with_general_ability(row, {}) for row in rows()])
    assert not any(column.startswith("general_accuracy") for column in table)
    assert general_ability_note({"baseline": {}}, {"baseline": {"retrain_none": 5}}) == ""
    # A retrained model whose fit mixed nothing in (ratio 0) counts as trained without.
    note = general_ability_note({"b": {"retrain_none": {"n": 3, "accuracy": 1.0}}}, {"b": {"retrain_none": 0}})
    assert "trained without general data: retrain, none" in note and "mixed in" not in note
