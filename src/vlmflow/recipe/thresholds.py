"""Confidence thresholds read from the data, and how well the label-noise scores rank the flipped records.

Whether a model's 0.9 means 90% is a property of that model, so a fixed ``pseudo.tau`` or
``correction.min_confidence`` suits one model and not the next. ``auto_threshold`` reads the threshold from
evidence instead: records with a confidence and whether each was right, the smallest threshold at which the
records at or above it are right at the target precision.

How the workflow maps its two thresholds onto that evidence (``agreement_evidence`` builds it):

- ``pseudo.tau: auto``: the fold models' out-of-fold predictions, each record's confidence its top probability
  and "right" whether that top label equals the given training label. The threshold is then applied to the
  test images' fold-averaged top probability, as a fixed tau is. The given labels' own errors count against the
  model, so the estimate is conservative where labels are noisy.
- ``correction.min_confidence: auto``: the proposals that disagree with the given label. Whether such a proposal
  is right is what no data without a truth file says (the given label is the only label there is, and it is the
  one in question), so the evidence is the same agreement of out-of-fold predictions with the given labels: a
  proposal at confidence c is taken to be right as often as the model's predictions at c or above agree with
  the labels. With a truth file (the demo), the precision the flags reached is measured afterwards
  (``vlmflow.recipe.correction.noise_detection_scores``), never used to choose the threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from vlmflow.evaluation.metrics import PROBABILITY_PREFIX, probability_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold (None when the target precision is out of reach: nothing is kept), the precision of
    the records at or above it (when out of reach, the best precision any threshold reached), how many records
    it keeps, and the target."""

    threshold: float | None
    precision_reached: float
    kept: int
    target_precision: float

    def as_metrics(self, prefix: str) -> dict:
        return {
            f"{prefix}_threshold": self.threshold,
            f"{prefix}_precision": self.precision_reached,
            f"{prefix}_kept": self.kept,
            f"{prefix}_target_precision": self.target_precision,
        }


def auto_threshold(confidences, correct, target_precision: float) -> ThresholdChoice:
    """The smallest threshold t among the confidences at which the records with confidence >= t are right
    (``correct``) at ``target_precision`` or better.

    Precision is not monotone in t, so every observed confidence is a candidate and the smallest one that
    qualifies wins (it keeps the most records); records with equal confidence are kept or dropped together. When
    no threshold reaches the target, the choice keeps nothing (threshold None) and reports the best precision
    any threshold reached.
    """
    confidences = np.asarray(confidences, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if confidences.shape != correct.shape or confidences.ndim != 1:
        raise ValueError(f"{confidences.shape} confidences for {correct.shape} outcomes: one of each a record")
    if not 0 < target_precision <= 1:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    if not len(confidences):
        raise ValueError("no records to choose a threshold from")
    if np.isnan(confidences).any():
        raise ValueError("confidences must not be NaN")
    order = np.argsort(-confidences, kind="stable")
    descending, hits = confidences[order], np.cumsum(correct[order])
    # The last position of each distinct confidence: the records kept at threshold = that confidence.
    last = np.flatnonzero(np.r_[descending[1:] != descending[:-1], True])
    kept = last + 1
    precision = hits[last] / kept
    reaching = np.flatnonzero(precision >= target_precision)
    if not len(reaching):
        best = float(precision.max())
        log.info("target precision %.3f out of reach (best %.3f): threshold keeps nothing", target_precision, best)
        return ThresholdChoice(None, best, 0, target_precision)
    chosen = reaching[-1]  # descending confidences: the last qualifying one is the smallest threshold
    choice = ThresholdChoice(
        float(descending[last[chosen]]), float(precision[chosen]), int(kept[chosen]), target_precision
    )
    log.info(
        "threshold %.4f keeps %d of %d records at precision %.3f (target %.3f)",
        choice.threshold,
        choice.kept,
        len(confidences),
        choice.precision_reached,
        target_precision,
    )
    return choice


def agreement_evidence(out_of_fold: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each out-of-fold record's top probability and whether its top label (first of equals) is its
    ``given_label``: the evidence for ``pseudo.tau: auto`` and ``correction.min_confidence: auto``."""
    columns = probability_columns(out_of_fold)
    if not columns:
        raise ValueError(f"the out-of-fold table has no probability columns ({PROBABILITY_PREFIX}<label>)")
    probabilities = out_of_fold[columns].to_numpy(dtype=float)
    labels = np.asarray([column[len(PROBABILITY_PREFIX) :] for column in columns], dtype=object)
    top = probabilities.argmax(axis=1)
    agrees = labels[top] == out_of_fold["given_label"].astype(str).to_numpy()
    return probabilities[np.arange(len(top)), top], agrees


def noise_scores(out_of_fold: pd.DataFrame) -> np.ndarray:
    """One minus each out-of-fold record's probability of its given label: the higher, the likelier mislabelled."""
    columns = probability_columns(out_of_fold)
    position = {column: index for index, column in enumerate(columns)}
    given = PROBABILITY_PREFIX + out_of_fold["given_label"].astype(str)
    missing = sorted(set(given) - position.keys())
    if missing:
        raise ValueError(f"given labels have no probability column: {missing}")
    probabilities = out_of_fold[columns].to_numpy(dtype=float)
    return 1.0 - probabilities[np.arange(len(probabilities)), given.map(position).to_numpy(dtype=int)]


def noise_auc(scores, flipped) -> float:
    """How well ``scores`` (higher: more likely mislabelled, e.g. one minus the given label's out-of-fold
    probability) rank the records whose label was flipped above the others: sklearn's ROC AUC, 0.5 a random
    ranking, 1 every flipped record first. It judges the ranking; precision and recall judge one threshold."""
    flipped = np.asarray(flipped, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if scores.shape != flipped.shape:
        raise ValueError(f"{scores.shape} scores for {flipped.shape} flipped flags: one of each a record")
    if flipped.all() or not flipped.any():
        raise ValueError(f"the AUC needs flipped and unflipped records; {int(flipped.sum())} of {len(flipped)} flipped")
    return float(roc_auc_score(flipped, scores))
