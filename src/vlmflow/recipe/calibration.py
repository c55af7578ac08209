"""Per-class biases on the log-probabilities, fitted to maximise weighted F1, and an honest estimate of their gain.

The submission takes the arg-max of the probabilities, and weighted F1 rewards where the class boundaries lie,
not how well the probabilities are calibrated: adding a bias ``b[c]`` to every record's log-probability of class
``c`` moves the boundaries of ``c`` to where the metric wants them. The biases are fitted on out-of-fold
probabilities against the (corrected) training labels and applied to the test probabilities.

Fitted and judged on the same records, the gain is optimistic (the fit also learns those records' noise), so
``nested_gain`` fits on the other folds' records and judges on each held-out fold's, as the test set would be.

The optimiser evaluates weighted F1 thousands of times; sklearn's ``f1_score`` costs milliseconds a call (it
validates and re-encodes its input each time), so the search scores integer codes from their confusion counts
(``weighted_f1_of_codes``, the same number: a unit test compares the two). Figures reported to people come from
``vlmflow.evaluation.sanity.weighted_f1`` (sklearn's) and its bootstrap (``paired_interval``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlmflow.evaluation.metrics import PROBABILITY_PREFIX, probability_columns
from vlmflow.evaluation.sanity import paired_interval, weighted_f1

log = logging.getLogger(__name__)

# Absolute bias values tried for each class: -3 to 3 in steps of 0.1 (a factor of e**3, about 20, either way on
# the probability), 0 included so that "no bias" is always a candidate.
GRID_STEP = 0.1
DEFAULT_GRID = np.round(np.arange(-30, 31) * GRID_STEP, 10)
MAX_SWEEPS = 5
# Probabilities of exactly 0 would give a log-probability of -inf, which no bias can move.
PROBABILITY_FLOOR = 1e-12


def weighted_f1_of_codes(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """sklearn's ``f1_score(truth, predicted, average="weighted", zero_division=0)`` for class codes 0..k-1:
    each class's F1 is 2 TP / (true + predicted count), weighted by its true count."""
    true_count = np.bincount(truth, minlength=n_classes)
    predicted_count = np.bincount(predicted, minlength=n_classes)
    hits = np.bincount(truth[truth == predicted], minlength=n_classes)
    denominator = true_count + predicted_count
    f1 = np.divide(2 * hits, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float((true_count * f1).sum() / len(truth)) if len(truth) else 0.0


def apply_biases(log_probs: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """The biased log-probabilities (``log_probs + biases``, one bias a class); their arg-max is the prediction."""
    log_probs = np.asarray(log_probs, dtype=float)
    biases = np.asarray(biases, dtype=float)
    if log_probs.ndim != 2 or biases.shape != (log_probs.shape[1],):
        raise ValueError(f"{biases.shape} biases for log-probabilities of shape {log_probs.shape}: one bias a class")
    return log_probs + biases


@dataclass(frozen=True)
class BiasFit:
    """Fitted biases (one per class, log-probability scale), the classes left at 0 because no record has them
    (column indices), the weighted F1 of the fit records before and after, and the sweeps the search ran."""

    biases: np.ndarray
    classes_left_at_zero: list[int]
    weighted_f1_before: float
    weighted_f1_after: float
    sweeps: int


def _check_fit_input(log_probs: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> None:
    if log_probs.ndim != 2 or len(log_probs) != len(labels):
        raise ValueError(
            f"log-probabilities of shape {log_probs.shape} for {len(labels)} labels: want (n, k), n labels"
        )
    if len(labels) == 0:
        raise ValueError("no records to fit biases on")
    if labels.min() < 0 or labels.max() >= log_probs.shape[1]:
        raise ValueError(
            f"labels must be class indices 0..{log_probs.shape[1] - 1}, got {labels.min()}..{labels.max()}"
        )
    if not np.all(np.isfinite(log_probs)):
        raise ValueError("log-probabilities must be finite (floor the probabilities before taking the log)")
    if not np.any(grid == 0):
        raise ValueError("the bias grid must contain 0 (no bias), where every class starts")


def fit_biases(
    log_probs: np.ndarray, labels: np.ndarray, *, grid: np.ndarray = DEFAULT_GRID, max_sweeps: int = MAX_SWEEPS
) -> BiasFit:
    """Per-class additive biases maximising the weighted F1 of ``argmax(log_probs + biases)`` against ``labels``
    (class indices, one a row of ``log_probs``).

    Coordinate ascent over ``grid`` (absolute bias values; default -3 to 3 in steps of 0.1): every bias starts at
    0; a sweep visits the classes in column order and sets each one's bias to the grid value that gives the
    highest weighted F1 with the other biases held, ties broken toward 0 (the smallest absolute value, then the
    negative one). Sweeps repeat until one changes nothing, at most ``max_sweeps``. Weighted F1 never decreases.
    A class no record has keeps bias 0 and is reported (``classes_left_at_zero``): there is no evidence for it.
    Biases are defined up to a constant common to all classes; starting at 0 and the tie-break keep them near 0.
    """
    log_probs = np.asarray(log_probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    grid = np.asarray(grid, dtype=float)
    _check_fit_input(log_probs, labels, grid)
    n_classes = log_probs.shape[1]
    present = np.bincount(labels, minlength=n_classes) > 0
    left_at_zero = [int(c) for c in np.flatnonzero(~present)]
    if left_at_zero:
        log.info("classes with no record keep bias 0: %s", left_at_zero)
    # Candidates in tie-break order (|value|, then value): a stable arg-max over them picks the one nearest 0.
    candidates = grid[np.lexsort((grid, np.abs(grid)))]

    def score(biases: np.ndarray) -> float:
        return weighted_f1_of_codes(labels, (log_probs + biases).argmax(axis=1), n_classes)

    biases = np.zeros(n_classes)
    before = score(biases)
    sweeps, changed = 0, True
    while changed and sweeps < max_sweeps:
        sweeps, changed = sweeps + 1, False
        for c in np.flatnonzero(present):
            trial = biases.copy()
            scores = []
            for value in candidates:
                trial[c] = value
                scores.append(score(trial))
            best = candidates[int(np.argmax(scores))]
            if best != biases[c]:
                biases[c], changed = best, True
    after = score(biases)
    log.info("biases fitted in %d sweep(s): weighted F1 %.4f -> %.4f on %d records", sweeps, before, after, len(labels))
    return BiasFit(biases, left_at_zero, before, after, sweeps)


def log_probabilities(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The labels of a probabilities table's ``p::<label>`` columns (in column order) and the log of those
    columns, floored at ``PROBABILITY_FLOOR`` so that a probability of 0 stays movable."""
    columns = probability_columns(table)
    if not columns:
        raise ValueError(f"the table has no probability columns ({PROBABILITY_PREFIX}<label>)")
    labels = [column[len(PROBABILITY_PREFIX) :] for column in columns]
    return labels, np.log(np.maximum(table[columns].to_numpy(dtype=float), PROBABILITY_FLOOR))


def label_codes(given: pd.Series, labels: list[str]) -> np.ndarray:
    """Each record's label as its column index in ``labels``; a label with no column is an error naming it."""
    index = {label: code for code, label in enumerate(labels)}
    unknown = sorted(set(given) - index.keys())
    if unknown:
        raise ValueError(f"labels {unknown} have no probability column; columns: {labels}")
    return given.map(index).to_numpy(dtype=int)


def biases_table(fit: BiasFit, labels: list[str]) -> pd.DataFrame:
    """One row a class, in column order: ``label``, ``bias`` and ``left_at_zero`` (no record had it); the
    artifact to log with a calibrated model."""
    left = set(fit.classes_left_at_zero)
    return pd.DataFrame(
        {"label": labels, "bias": fit.biases, "left_at_zero": [code in left for code in range(len(labels))]}
    )


def calibrated_probabilities(table: pd.DataFrame, biases: np.ndarray) -> pd.DataFrame:
    """The table with its ``p::`` columns replaced by softmax(log p + biases) and ``predicted`` by their arg-max
    (first of equals, as scoring does); other columns unchanged."""
    labels, log_probs = log_probabilities(table)
    biased = apply_biases(log_probs, biases)
    shifted = np.exp(biased - biased.max(axis=1, keepdims=True))
    calibrated = table.copy()
    calibrated[[PROBABILITY_PREFIX + label for label in labels]] = shifted / shifted.sum(axis=1, keepdims=True)
    calibrated["predicted"] = [labels[code] for code in biased.argmax(axis=1)]
    return calibrated


@dataclass(frozen=True)
class NestedGain:
    """The honest estimate of what biases add: per held-out fold, weighted F1 with biases fitted on the other
    folds minus without; ``gain`` is the mean over folds, ``low``/``high`` its 95% bootstrap interval over
    records; ``classes_left_at_zero`` per fold lists the classes the other folds lacked."""

    fold_gains: dict[int, float]
    gain: float
    low: float
    high: float
    classes_left_at_zero: dict[int, list[int]]

    def as_metrics(self, prefix: str = "oof_calibration_gain") -> dict[str, float]:
        return {prefix: self.gain, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


def nested_gain(
    log_probs: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    grid: np.ndarray = DEFAULT_GRID,
    max_sweeps: int = MAX_SWEEPS,
) -> NestedGain:
    """The gain in weighted F1 of per-class biases on records they were not fitted on.

    ``log_probs``, ``labels`` (class indices) and ``folds`` describe the out-of-fold records, each predicted by
    the model that did not train on it. For each fold, biases are fitted (``fit_biases``) on the other folds'
    records and applied to the fold's own. The gain is the mean over folds of calibrated minus uncalibrated
    weighted F1 on the held-out fold; its interval is the project's paired percentile bootstrap
    (``paired_interval``: 1,000 resamples, seed 0) of that same mean over the pooled held-out records, the fold
    of each record resampled with it. The biases stay as fitted: the interval is the judging records' luck,
    not the fit's.
    """
    log_probs = np.asarray(log_probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    folds = np.asarray(folds)
    if len(folds) != len(labels):
        raise ValueError(f"{len(folds)} folds for {len(labels)} records")
    fold_names = sorted(set(folds.tolist()))
    if len(fold_names) < 2:
        raise ValueError(f"a nested estimate needs at least 2 folds, got {fold_names}")
    n_classes = log_probs.shape[1]
    calibrated = np.empty(len(labels), dtype=int)
    left_at_zero = {}
    for fold in fold_names:
        held_out = folds == fold
        fit = fit_biases(log_probs[~held_out], labels[~held_out], grid=grid, max_sweeps=max_sweeps)
        calibrated[held_out] = apply_biases(log_probs[held_out], fit.biases).argmax(axis=1)
        left_at_zero[int(fold)] = fit.classes_left_at_zero
    uncalibrated = log_probs.argmax(axis=1)

    def mean_fold_gain(truth, ours, theirs, fold_of):
        gains = [
            weighted_f1_of_codes(truth[part], ours[part], n_classes)
            - weighted_f1_of_codes(truth[part], theirs[part], n_classes)
            for part in (fold_of == fold for fold in np.unique(fold_of))
        ]
        return float(np.mean(gains))

    fold_gains = {
        int(fold): weighted_f1(labels[folds == fold], calibrated[folds == fold])
        - weighted_f1(labels[folds == fold], uncalibrated[folds == fold])
        for fold in fold_names
    }
    gain = float(np.mean(list(fold_gains.values())))
    low, high = paired_interval((labels, calibrated, uncalibrated, folds), mean_fold_gain)
    log.info(
        "nested calibration gain %.4f (95%% interval %.4f to %.4f) over %d folds", gain, low, high, len(fold_names)
    )
    return NestedGain(fold_gains, gain, low, high, left_at_zero)
