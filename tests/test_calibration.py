import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from vlmflow.recipe.calibration import (
    GRID_STEP,
    apply_biases,
    biases_table,
    calibrated_probabilities,
    fit_biases,
    label_codes,
    log_probabilities,
    nested_gain,
    weighted_f1_of_codes,
)

N_CLASSES = 5
# Offsets subtracted from some classes' log-probabilities (on the grid); the fit must add them back.
PLANTED = np.array([0.0, 0.8, 0.0, -0.5, 1.5])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def separable(n: int, seed: int, gap: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities whose arg-max is always the true label, by at least ``gap`` and often by little more:
    weighted F1 1 is reached only when each bias is within about ``gap`` of the planted offset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    logits = rng.normal(0, 1, (n, N_CLASSES))
    best_other = np.where(np.eye(N_CLASSES, dtype=bool)[labels], -np.inf, logits).max(axis=1)
    logits[np.arange(n), labels] = best_other + gap + rng.exponential(0.5, n)
    return log_softmax(logits), labels


def noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A model about 80% right: the true label's logit raised by 2 over standard normal noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    logits = rng.normal(0, 1, (n, N_CLASSES))
    logits[np.arange(n), labels] += 2.0
    return log_softmax(logits), labels


def stratified_folds(labels: np.ndarray, n_folds: int = 3) -> np.ndarray:
    """Each class's records dealt round the folds, as the workflow's stratified folds share them out."""
    folds = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        folds[members] = np.arange(len(members)) % n_folds
    return folds


def test_fast_weighted_f1_equals_sklearns():
    rng = np.random.default_rng(0)
    for n_classes, n in [(5, 200), (25, 700), (4, 3)]:
        truth = rng.integers(0, n_classes - 1, n)  # the last class never true, sometimes predicted
        predicted = rng.integers(0, n_classes, n)
        expected = f1_score(truth, predicted, average="weighted", zero_division=0)
        assert weighted_f1_of_codes(truth, predicted, n_classes) == pytest.approx(expected, abs=1e-12)


def test_fit_recovers_planted_biases():
    log_probs, labels = separable(1000, seed=0)
    shifted = log_probs - PLANTED
    assert weighted_f1_of_codes(labels, shifted.argmax(axis=1), N_CLASSES) < 0.6  # the offsets cost a lot

    fit = fit_biases(shifted, labels)

    restored = apply_biases(shifted, fit.biases).argmax(axis=1)
    assert (restored == labels).all()  # every record's arg-max is its label again, as before the offsets
    assert fit.weighted_f1_after == 1.0 > fit.weighted_f1_before
    assert np.abs(fit.biases - PLANTED).max() <= GRID_STEP + 1e-9
    assert fit.classes_left_at_zero == []


def test_a_class_without_records_keeps_bias_zero_and_is_reported():
    log_probs, labels = separable(600, seed=1)
    kept = labels != 3  # no record of class 3, whose column still has probabilities
    fit = fit_biases(log_probs[kept] - PLANTED, labels[kept])

    assert fit.biases[3] == 0.0
    assert fit.classes_left_at_zero == [3]
    table = biases_table(fit, ["a", "b", "c", "d", "e"])
    assert table.loc[table["left_at_zero"], "label"].tolist() == ["d"]
    assert table["bias"].tolist() == fit.biases.tolist()


def test_nested_gain_is_about_zero_when_labels_are_shuffled():
    log_probs, labels = noisy(900, seed=0)
    shuffled = np.random.default_rng(100).permutation(labels)  # labels that the probabilities know nothing of

    in_sample = fit_biases(log_probs, shuffled)
    nested = nested_gain(log_probs, shuffled, stratified_folds(shuffled))

    assert in_sample.weighted_f1_after > in_sample.weighted_f1_before  # fitting noise looks like a gain in-sample
    assert nested.low <= 0 <= nested.high  # judged on held-out folds, it is not one
    assert nested.low <= nested.gain <= nested.high
    assert sorted(nested.fold_gains) == [0, 1, 2]
    assert nested.gain == pytest.approx(np.mean(list(nested.fold_gains.values())))


def test_nested_gain_is_positive_for_a_planted_bias():
    log_probs, labels = noisy(900, seed=0)
    nested = nested_gain(log_probs - PLANTED, labels, stratified_folds(labels))

    assert nested.low > 0
    assert nested.as_metrics() == {
        "oof_calibration_gain": nested.gain,
        "oof_calibration_gain_low": nested.low,
        "oof_calibration_gain_high": nested.high,
    }


def probabilities_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["r1", "r2"],
            "p::a": [0.5, 0.2],
            "p::b": [0.4, 0.8],
            "p::c": [0.1, 0.0],
            "predicted": ["a", "b"],
            "fold": [0, 1],
        }
    )


def test_calibrated_probabilities_move_the_arg_max_and_still_sum_to_one():
    table = probabilities_table()
    calibrated = calibrated_probabilities(table, np.array([0.0, np.log(2), 0.0]))  # b's probability doubled

    assert calibrated["predicted"].tolist() == ["b", "b"]  # r1: a 0.5 against b 0.8 before normalising
    assert calibrated[["p::a", "p::b", "p::c"]].sum(axis=1).to_numpy() == pytest.approx([1.0, 1.0])
    assert calibrated.loc[0, "p::b"] == pytest.approx(0.8 / 1.4)
    assert calibrated["fold"].tolist() == [0, 1]
    unchanged = calibrated_probabilities(table, np.zeros(3))
    assert unchanged[["p::a", "p::b"]].to_numpy() == pytest.approx(table[["p::a", "p::b"]].to_numpy())


def test_log_probabilities_floor_zero_and_codes_name_unknown_labels():
    labels, log_probs = log_probabilities(probabilities_table())
    assert labels == ["a", "b", "c"]
    assert np.isfinite(log_probs).all()  # r2's probability 0 for c is floored, so a bias can still move it
    assert label_codes(pd.Series(["b", "a"]), labels).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"labels \['z'\] have no probability column"):
        label_codes(pd.Series(["a", "z"]), labels)


def test_bad_input_fails_saying_what_is_wrong():
    log_probs, labels = noisy(30, seed=2)
    with pytest.raises(ValueError, match="want \\(n, k\\), n labels"):
        fit_biases(log_probs, labels[:-1])
    with pytest.raises(ValueError, match="must contain 0"):
        fit_biases(log_probs, labels, grid=np.array([-0.5, 0.5]))
    with pytest.raises(ValueError, match="class indices 0..4"):
        fit_biases(log_probs, np.full(30, 7))
    with pytest.raises(ValueError, match="finite"):
        fit_biases(np.full((30, N_CLASSES), -np.inf), labels)
    with pytest.raises(ValueError, match="one bias a class"):
        apply_biases(log_probs, np.zeros(N_CLASSES + 1))
    with pytest.raises(ValueError, match="at least 2 folds"):
        nested_gain(log_probs, labels, np.zeros(30, dtype=int))
