"""Pseudo-labels for the test set from the K fold models, and their training records (Noisy-Student style).

A test image is kept when the fold-averaged probability of its top label reaches ``tau`` and at least
``min_agreeing_folds`` fold models pick that label on their own: averaging alone can hide folds that
disagree, and agreement alone ignores how sure the models are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from vlmflow.data.ingest import RECORD_COLUMNS
from vlmflow.data.messages import name_ids
from vlmflow.evaluation.metrics import PROBABILITY_PREFIX, probability_columns

log = logging.getLogger(__name__)

SELECTED_COLUMNS = ["id", "label", "confidence", "agreeing_folds"]
PSEUDO_SOURCE = "pseudo"


def _check_fold_tables(tables: list[pd.DataFrame]) -> list[str]:
    """Every fold must score the same ids over the same labels; return the probability columns."""
    if not tables:
        raise ValueError("no fold test tables given")
    columns = probability_columns(tables[0])
    if not columns:
        raise ValueError(f"fold 0 has no probability columns ({PROBABILITY_PREFIX}<label>)")
    reference_ids = set(tables[0]["id"])
    for fold, table in enumerate(tables):
        repeated = table["id"][table["id"].duplicated()]
        if len(repeated):
            raise ValueError(f"fold {fold} scores id {repeated.iloc[0]!r} more than once")
        # columns are selected by name below, so only the set matters, not the order
        other = probability_columns(table)
        missing_column = next((column for column in columns if column not in other), None)
        if missing_column is not None:
            raise ValueError(f"fold {fold} lacks probability column {missing_column!r} that fold 0 has")
        extra_column = next((column for column in other if column not in columns), None)
        if extra_column is not None:
            raise ValueError(f"fold {fold} has probability column {extra_column!r} that fold 0 lacks")
        ids = set(table["id"])
        missing = next((i for i in tables[0]["id"] if i not in ids), None)
        if missing is not None:
            raise ValueError(f"fold {fold} lacks test id {missing!r} that fold 0 scores")
        extra = next((i for i in table["id"] if i not in reference_ids), None)
        if extra is not None:
            raise ValueError(f"fold {fold} scores test id {extra!r} that fold 0 lacks")
    return columns


def select_pseudo_labels(
    fold_test_probs: list[pd.DataFrame],
    *,
    tau: float,
    min_agreeing_folds: int,
    per_class_cap: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Choose confident, fold-consistent test predictions as pseudo-labels.

    Each table holds one fold model's test predictions (``id``, ``p::<label>`` ...). A test id is kept
    when its mean top probability is ``>= tau`` and at least ``min_agreeing_folds`` folds' own argmax
    equals that top label; ``per_class_cap`` then keeps the most confident per label (ties: smaller id).
    Returns ``id, label, confidence, agreeing_folds`` sorted by label (label-file order, i.e. column
    order), confidence descending, id; and a report whose counts add up:
    ``candidates = kept + rejected_by_tau + rejected_by_agreement + dropped_by_cap`` (an id failing both
    tests counts under tau). The selection is deterministic: no seed.
    """
    columns = _check_fold_tables(fold_test_probs)
    n_folds = len(fold_test_probs)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if not 1 <= min_agreeing_folds <= n_folds:
        raise ValueError(f"min_agreeing_folds must be in 1..{n_folds} (the number of folds), got {min_agreeing_folds}")
    if per_class_cap is not None and per_class_cap < 0:
        raise ValueError(f"per_class_cap must be None or >= 0, got {per_class_cap}")
    labels = [column[len(PROBABILITY_PREFIX) :] for column in columns]
    ids = fold_test_probs[0]["id"]

    # (folds, ids, labels), every fold aligned to fold 0's id order
    stacked = np.stack([table.set_index("id").loc[ids, columns].to_numpy(dtype=float) for table in fold_test_probs])
    if np.isnan(stacked).any():
        fold, row, _ = np.argwhere(np.isnan(stacked))[0]
        raise ValueError(f"fold {fold} has a missing probability for test id {ids.iloc[row]!r}")
    mean = stacked.mean(axis=0)
    top = mean.argmax(axis=1)
    confidence = mean[np.arange(len(ids)), top]
    agreeing = (stacked.argmax(axis=2) == top).sum(axis=0)

    passes_tau = confidence >= tau
    passes_agreement = agreeing >= min_agreeing_folds
    candidates = pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "label": [labels[i] for i in top],
            "confidence": confidence,
            "agreeing_folds": agreeing.astype(int),
            "label_rank": top,
        }
    )[passes_tau & passes_agreement]
    ordered = candidates.sort_values(["label_rank", "confidence", "id"], ascending=[True, False, True], kind="stable")
    kept = ordered.groupby("label_rank", sort=False).head(per_class_cap) if per_class_cap is not None else ordered
    selected = kept[SELECTED_COLUMNS].reset_index(drop=True)

    kept_per_class = selected["label"].value_counts()
    report = {
        "folds": n_folds,
        "tau": tau,
        "min_agreeing_folds": min_agreeing_folds,
        "per_class_cap": per_class_cap,
        "candidates": len(ids),
        "kept": len(selected),
        "rejected_by_tau": int((~passes_tau).sum()),
        "rejected_by_agreement": int((passes_tau & ~passes_agreement).sum()),
        "dropped_by_cap": len(ordered) - len(selected),
        "kept_per_class": {label: int(kept_per_class.get(label, 0)) for label in labels},
    }
    log.info(
        "pseudo-labels: %d of %d test ids kept; tau %.3g rejected %d, %d-of-%d agreement %d, cap dropped %d",
        report["kept"],
        report["candidates"],
        tau,
        report["rejected_by_tau"],
        min_agreeing_folds,
        n_folds,
        report["rejected_by_agreement"],
        report["dropped_by_cap"],
    )
    return selected, report


def pseudo_training_records(
    selected: pd.DataFrame, test_records: pd.DataFrame, *, train_ids: Iterable[str]
) -> pd.DataFrame:
    """The selected pseudo-labels as training records: the ingested train table's columns plus ``source``.

    ``test_records`` is the ingested test table (``id, image_path, image_sha256, width, height``, label
    ignored). A pseudo id equal to a training id would make two records share one id in the next
    round's training set, so collisions raise.
    """
    collisions = sorted(set(selected["id"]) & set(train_ids))
    if collisions:
        raise ValueError(f"{len(collisions)} pseudo-label id(s) collide with training ids: {name_ids(collisions)}")
    repeated = selected["id"][selected["id"].duplicated()].unique()
    if len(repeated):
        raise ValueError(f"pseudo-labels list these ids more than once: {name_ids(repeated)}")
    known = set(test_records["id"])
    unknown = [i for i in selected["id"] if i not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} pseudo-label id(s) are not test records: {name_ids(unknown)}")
    images = test_records.drop(columns=["label"], errors="ignore")
    records = selected[["id", "label"]].merge(images, on="id", how="left", validate="one_to_one")
    records = records[RECORD_COLUMNS].astype({"label": "string"})
    records["source"] = PSEUDO_SOURCE
    return records
