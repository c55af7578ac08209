import math

import pytest

from vlmflow.evaluation.summary import (
    ablation_row,
    ablation_table,
    counts_as,
    difference_metrics,
    difference_whiskers,
    general_ability_note,
    idle_steps_note,
    plot_ablation,
    seed_points,
    summarize_ablation,
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


def across_seeds(by_seed: dict[int, float], difference: tuple[float, float, float] | None = None) -> dict:
    """A retrained model's metrics across its seeds, as evaluate_across_seeds writes them."""
    values = list(by_seed.values())
    metrics = {
        "seeds": sorted(by_seed),
        "test_weighted_f1": sum(values) / len(values),
        "test_weighted_f1_seed_range": max(values) - min(values) if len(values) > 1 else None,
        "test_weighted_f1_by_seed": {str(seed): value for seed, value in by_seed.items()},
    }
    if difference:
        metrics |= dict(
            zip(
                ["test_weighted_f1_minus_none", "test_weighted_f1_minus_none_low", "test_weighted_f1_minus_none_high"],
                difference,
                strict=True,
            )
        )
    return metrics


def two_seed_models() -> dict[str, dict]:
    return {
        "retrain_none": across_seeds({42: 0.60, 43: 0.64}),  # seed range 0.04
        # Clears the test-set interval, but not the no-step model's seed range: not a gain.
        "retrain_correction": across_seeds({42: 0.63, 43: 0.64}, (0.015, 0.005, 0.030)),
        # Clears both: the interval leaves out 0 and 0.15 > max(0.02, 0.04).
        "retrain_correction_pseudo": across_seeds({42: 0.76, 43: 0.78}, (0.15, 0.08, 0.22)),
        # A loss that clears both.
        "retrain_pseudo": across_seeds({42: 0.40, 43: 0.41}, (-0.215, -0.30, -0.12)),
        # Larger than both ranges, but the interval holds 0: the test set's luck may explain it.
        "retrain_wide": across_seeds({42: 0.70, 43: 0.71}, (0.085, -0.01, 0.18)),
    }


def test_a_difference_counts_as_a_gain_only_when_it_clears_the_bootstrap_interval_and_the_seed_range():
    models = two_seed_models()
    reference = models["retrain_none"]
    assert counts_as(models["retrain_correction"], reference) is None
    assert counts_as(models["retrain_correction_pseudo"], reference) == "gain"
    assert counts_as(models["retrain_pseudo"], reference) == "loss"
    assert counts_as(models["retrain_wide"], reference) is None
    # The larger of the two ranges counts: a model whose own seeds spread wider than its gain is not marked.
    unsteady = across_seeds({42: 0.60, 43: 0.92}, (0.15, 0.08, 0.22))
    assert counts_as(unsteady, reference) is None
    # A model fitted once (the averaged fold model) has no known range: never marked.
    assert (
        counts_as(
            {
                "test_weighted_f1_minus_none": 0.15,
                "test_weighted_f1_minus_none_low": 0.08,
                "test_weighted_f1_minus_none_high": 0.22,
            },
            reference,
        )
        is None
    )


def test_the_summary_reports_the_mean_the_seed_range_and_marks_what_counts(tmp_path):
    models = two_seed_models()
    row = ablation_row("baseline", {"oof_weighted_f1": 0.5}, {}, models, "retrain_correction_pseudo")
    assert row["test_weighted_f1.retrain_none"] == pytest.approx(0.62)  # the mean over seeds
    assert row["test_weighted_f1_seed_range.retrain_none"] == pytest.approx(0.04)
    assert row["test_weighted_f1_minus_none.retrain_correction"] == "+0.015 [+0.005, +0.030] *"  # interval only
    assert row["test_weighted_f1_minus_none.retrain_correction_pseudo"] == "+0.150 [+0.080, +0.220] * gain"
    assert row["test_weighted_f1_minus_none.retrain_pseudo"] == "-0.215 [-0.300, -0.120] * loss"
    assert row["test_weighted_f1_minus_none.retrain_wide"] == "+0.085 [-0.010, +0.180]"
    table = ablation_table([row])
    markdown = to_markdown(table)
    assert "seed range (max - min): retrain, none" in markdown
    assert "|difference| > max(range, no-step range)" in markdown and "One seed" not in markdown
    metrics = summary_metrics(table) | difference_metrics({"baseline": models})
    assert metrics["baseline.test_weighted_f1_seed_range.retrain_none"] == pytest.approx(0.04)
    assert metrics["baseline.test_weighted_f1_minus_none_low.retrain_correction_pseudo"] == 0.08
    assert [metrics[f"baseline.difference_counts.{name}"] for name in models if name != "retrain_none"] == [
        0.0,
        1.0,
        -1.0,
        0.0,
    ]
    points = seed_points({"baseline": models})
    assert points[("baseline", "test_weighted_f1.retrain_none")] == [0.60, 0.64]
    plot_ablation(table, tmp_path / "bars.png", difference_whiskers({"baseline": models}))
    plot_ablation(table, tmp_path / "dots.png", difference_whiskers({"baseline": models}), points)
    assert (tmp_path / "dots.png").read_bytes() != (tmp_path / "bars.png").read_bytes()


def test_with_one_seed_the_spread_is_unknown_and_nothing_is_marked_a_gain():
    models = {
        "retrain_none": across_seeds({42: 0.60}),
        "retrain_correction_pseudo": across_seeds({42: 0.90}, (0.30, 0.20, 0.40)),
    }
    row = ablation_row("baseline", {"oof_weighted_f1": 0.5}, {}, models, "retrain_correction_pseudo")
    assert row["test_weighted_f1_minus_none.retrain_correction_pseudo"] == "+0.300 [+0.200, +0.400] *"
    table = ablation_table([row])
    assert not any(column.startswith("test_weighted_f1_seed_range.") for column in table)
    markdown = to_markdown(table)
    assert "One seed per retrained model" in markdown and "no difference is marked as a gain" in markdown
    assert difference_metrics({"baseline": models})["baseline.difference_counts.retrain_correction_pseudo"] == 0.0
    assert seed_points({"baseline": models}) == {}  # one dot would only repeat the bar


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


def test_a_retrained_model_whose_steps_changed_no_record_is_named_as_such():
    """0 labels corrected and 0 pseudo-labels kept: the fit trained on the no-step model's records (the demo at
    the fold models' low confidence), which the summary says rather than let a difference look like a step's."""
    fits = {
        "baseline": {"retrain_none": {"pseudo": 0}, "retrain_correction_pseudo": {"pseudo": 0}},
        "baseline_ocr": {"retrain_correction_pseudo": {"pseudo": 4}, "retrain_correction": {"pseudo": 0}},
    }
    corrections = {"baseline": {"applied": 0}, "baseline_ocr": {"applied": 3}}
    note = idle_steps_note(corrections, fits)
    assert "retrain, correction + pseudo (baseline: correction applied no label and no pseudo-label was kept)" in note
    assert "baseline_ocr" not in note and "retrain, none" not in note  # its steps changed records; none has none
    assert idle_steps_note({"baseline": {"applied": 2}}, {"baseline": {"retrain_correction": {"pseudo": 0}}}) == ""
    note = idle_steps_note({"b": {"applied": 0}}, {"b": {"retrain_correction": {"pseudo": 9}}})
    assert "retrain, correction (b: correction applied no label)." in note


def variant_metrics(oof: float, blind: float) -> dict:
    """metrics.json of a variant; ``blind``: the majority-class and chance predictors' weighted F1."""
    return {
        "oof_weighted_f1": oof,
        "oof_weighted_f1_low": oof - 0.05,
        "oof_weighted_f1_high": oof + 0.05,
        "oof_majority_weighted_f1": blind,
        "oof_chance_weighted_f1": blind,
        "test_weighted_f1": oof,
    }


def test_the_whole_summary_is_written_from_the_runs_results(tmp_path):
    difference = {
        f"test_weighted_f1_minus_none{end}": value
        for end, value in zip(("", "_low", "_high"), (0.15, 0.08, 0.22), strict=True)
    }
    finals = {"retrain_none": {"test_weighted_f1": 0.60}, "retrain_correction": {"test_weighted_f1": 0.75} | difference}
    ocr_stage = {"stage": "ocr", "records_in": 10, "with_text": 1}
    summary = summarize_ablation(
        ["baseline", "baseline_ocr"],
        metrics={"baseline": variant_metrics(0.8, 0.2), "baseline_ocr": variant_metrics(0.3, 0.3)},
        accounting={"baseline": {"stages": []}, "baseline_ocr": {"stages": [ocr_stage]}},
        corrections={"baseline": {"applied": 0}, "baseline_ocr": {"applied": 0}},
        final_models={"baseline": finals, "baseline_ocr": {}},
        submitted={"baseline": "retrain_correction", "baseline_ocr": "average_folds"},
        general={"baseline": {"retrain_none": {"accuracy": 0.5, "n": 4}}, "baseline_ocr": {}},
        first_fits={"baseline": {"retrain_correction": {"pseudo": 0, "general_records": 3}}},
        base_general={"accuracy": 0.75, "correct": 3, "n": 4},
        min_ocr_text_share=0.5,
    )
    assert list(summary.table["variant"]) == ["baseline", "baseline_ocr"]
    assert summary.table["general_accuracy.retrain_none"].tolist()[0] == 0.5
    # baseline_ocr reaches the blind predictors and its OCR read 10% of its images; baseline is clean.
    assert len(summary.warnings) == 2 and all("baseline_ocr" in warning for warning in summary.warnings)
    assert summary.markdown.startswith("## Warnings")
    assert "Steps that changed nothing: retrain, correction (baseline: correction applied no label)" in summary.markdown
    assert "the untuned base model, for reference: 0.750 (3 of 4)" in summary.markdown
    metrics = summary.metrics()
    assert metrics["baseline.oof_weighted_f1"] == 0.8
    assert metrics["baseline.test_weighted_f1_minus_none.retrain_correction"] == 0.15

    paths = [tmp_path / name for name in ("summary.csv", "summary.md", "warnings.txt", "summary.png")]
    summary.write(*paths)
    assert paths[0].read_text(encoding="utf-8").startswith("variant,oof_weighted_f1")
    assert paths[1].read_text(encoding="utf-8") == summary.markdown
    assert paths[2].read_text(encoding="utf-8").splitlines() == [f"WARNING: {w}" for w in summary.warnings]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_variant_without_its_results_is_refused():
    with pytest.raises(KeyError):
        summarize_ablation(
            ["baseline"], {}, {}, {}, {"baseline": {}}, {"baseline": "average_folds"}, {"baseline": {}}, {}, None, 0.5
        )
