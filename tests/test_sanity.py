"""The learned-nothing checks: a predictor at chance is caught, a real one is not, OCR that read nothing is; the
differences between final models over test images and over training seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmflow.evaluation.sanity import (
    across_seeds,
    chance_weighted_f1,
    difference_from_reference,
    learned_nothing,
    no_image_baselines,
    paired_difference,
    run_warnings,
    seed_spread,
    unreadable_ocr,
    weighted_f1,
)

RNG = np.random.default_rng(0)
LABELS = pd.Series(RNG.choice(list("abcde"), size=300, p=[0.4, 0.3, 0.15, 0.1, 0.05]))


def metrics_of(predicted) -> dict:
    baselines = no_image_baselines(LABELS, pd.Series(predicted), "oof")
    return {"oof_weighted_f1": weighted_f1(LABELS, predicted), **baselines}


def test_chance_is_the_mean_weighted_f1_of_labels_drawn_at_their_frequencies():
    shares = LABELS.value_counts(normalize=True)
    draws = [weighted_f1(LABELS, RNG.choice(shares.index, size=len(LABELS), p=shares.values)) for _ in range(200)]
    assert chance_weighted_f1(LABELS) == pytest.approx(np.mean(draws), abs=0.01)


def test_a_predictor_that_ignores_the_image_learned_nothing():
    shares = LABELS.value_counts(normalize=True)
    at_chance = RNG.choice(shares.index, size=len(LABELS), p=shares.values)
    warning = learned_nothing("baseline", metrics_of(at_chance))
    assert warning and "variant baseline learned nothing" in warning and "chance" in warning
    assert "image paths" in warning and "learning rate" in warning  # what to check
    majority = learned_nothing("baseline", metrics_of([LABELS.mode()[0]] * len(LABELS)))
    assert majority and "majority-class" in majority


def test_a_predictor_that_is_right_most_of_the_time_learned_something():
    predicted = LABELS.where(RNG.random(len(LABELS)) < 0.8, "a")
    metrics = metrics_of(predicted)
    assert metrics["oof_weighted_f1_low"] < metrics["oof_weighted_f1"] < metrics["oof_weighted_f1_high"]
    assert learned_nothing("baseline", metrics) is None


def test_ocr_that_found_text_in_few_images_is_named():
    stages = [{"stage": "ocr", "split": "all", "records_in": 50, "with_text": 10}]
    warning = unreadable_ocr("baseline_ocr", stages, min_share=0.5)
    assert warning and "only 20% of its images" in warning
    assert unreadable_ocr("baseline_ocr", [{**stages[0], "with_text": 40}], min_share=0.5) is None
    assert unreadable_ocr("baseline", [{"stage": "prompts/baseline", "records_in": 50}], min_share=0.5) is None
    right = metrics_of(LABELS)
    assert run_warnings({"baseline_ocr": right}, {"baseline_ocr": stages}, 0.5) == [warning]


def test_a_paired_difference_tells_a_real_gain_from_the_test_sets_luck():
    reference = LABELS.where(RNG.random(len(LABELS)) < 0.5, "a")  # right about half the time
    better = LABELS.where(RNG.random(len(LABELS)) < 0.9, "a")
    gain = paired_difference(LABELS, better, reference, "d")
    assert gain["d_low"] > 0 and gain["d_low"] < gain["d"] < gain["d_high"]
    # Four records changed out of 300: whatever the sign, the interval holds 0.
    nudged = reference.copy()
    nudged.iloc[:4] = LABELS.iloc[:4]
    luck = paired_difference(LABELS, nudged, reference, "d")
    assert luck["d_low"] <= 0 <= luck["d_high"]
    same = paired_difference(LABELS, reference, reference, "d")
    assert same == {"d": 0.0, "d_low": 0.0, "d_high": 0.0}


def test_the_difference_from_the_no_step_model_pairs_records_by_id_whatever_their_order():
    ids = [f"r{i}" for i in range(len(LABELS))]
    truth = pd.DataFrame({"id": ids, "label": LABELS})
    better = pd.DataFrame({"id": ids, "predicted": LABELS})
    reference = pd.DataFrame({"id": ids, "predicted": LABELS.where(RNG.random(len(LABELS)) < 0.5, "a")})
    shuffled = reference.sample(frac=1.0, random_state=0)  # another job's table, in its own order
    found = difference_from_reference(better, shuffled, truth)
    assert found == paired_difference(LABELS, LABELS, reference["predicted"], "test_weighted_f1_minus_none")
    assert found["test_weighted_f1_minus_none_low"] > 0


def test_the_seed_spread_is_the_range_of_the_fits_and_unknown_with_one():
    spread = seed_spread({43: 0.64, 42: 0.60})
    assert spread["test_weighted_f1"] == pytest.approx(0.62)
    assert spread["test_weighted_f1_seed_range"] == pytest.approx(0.04)
    assert (spread["test_weighted_f1_seed_min"], spread["test_weighted_f1_seed_max"]) == (0.60, 0.64)
    assert spread["test_weighted_f1_by_seed"] == {"42": 0.60, "43": 0.64}
    assert seed_spread({42: 0.6})["test_weighted_f1_seed_range"] is None  # one fit says nothing of the next


def test_the_mean_difference_over_seeds_pairs_each_seed_with_the_no_step_models_same_seed():
    labels = LABELS.iloc[:60]
    ids = [f"r{i}" for i in range(len(labels))]
    truth = pd.DataFrame({"id": ids, "label": labels})
    rng = np.random.default_rng(1)

    def fit(right_share):
        return pd.DataFrame({"id": ids, "predicted": labels.where(rng.random(len(labels)) < right_share, "a")})

    tests = {42: fit(0.9), 43: fit(0.8)}
    references = {43: fit(0.5).sample(frac=1.0, random_state=0), 42: fit(0.4)}  # any order, by seed
    found = across_seeds(tests, references, truth)
    by_seed = {seed: weighted_f1(labels, test["predicted"]) for seed, test in tests.items()}
    assert found["seeds"] == [42, 43] and found["n"] == 60
    assert found["test_weighted_f1"] == pytest.approx(np.mean(list(by_seed.values())))
    assert found["test_weighted_f1_seed_range"] == pytest.approx(abs(by_seed[42] - by_seed[43]))
    differences = [
        by_seed[seed] - weighted_f1(labels, references[seed].set_index("id").loc[ids, "predicted"]) for seed in tests
    ]
    assert found["test_weighted_f1_minus_none"] == pytest.approx(np.mean(differences))
    assert 0 < found["test_weighted_f1_minus_none_low"] < found["test_weighted_f1_minus_none"]
    assert found["test_weighted_f1_minus_none"] < found["test_weighted_f1_minus_none_high"]
    # Without a truth file only the seeds; seeds that do not pair fail, naming both.
    assert across_seeds(tests, references, None) == {"seeds": [42, 43], "n": 60}
    with pytest.raises(ValueError, match=r"seeds \[42, 43\] are paired with the no-step model's seeds \[42\]"):
        across_seeds(tests, {42: references[42]}, truth)
