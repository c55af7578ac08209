"""Variant ensembles: the (optionally weighted) mean of several variants' probabilities for the same records.

Variants (OCR and no OCR, two prompts) make different errors, and each already scored the same out-of-fold and
test records, so averaging their probabilities is an ensemble the run has paid for. Tables must describe the
same records over the same labels; a difference fails here, naming it, rather than averaging the wrong rows.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from vlmflow.data.messages import name_ids
from vlmflow.evaluation.metrics import PROBABILITY_PREFIX, probability_columns

log = logging.getLogger(__name__)


def _one_sided(name: str, first: str, theirs: set, ours: set) -> str:
    """What only one of two tables has, for an error message: "only B has 'x'; only A has 'y'"."""
    sides = [(name, sorted(theirs - ours)), (first, sorted(ours - theirs))]
    return "; ".join(f"only {side} has {name_ids(items)}" for side, items in sides if items)


def _check_same_records(tables: list[pd.DataFrame], names: list[str]) -> list[str]:
    """The first table's probability columns, once every table has the same labels, ids and other columns."""
    reference, first = tables[0], names[0]
    columns = probability_columns(reference)
    if not columns:
        raise ValueError(f"{first} has no probability columns ({PROBABILITY_PREFIX}<label>)")
    for table, name in zip(tables, names, strict=True):
        repeated = table["id"][table["id"].duplicated()].unique()
        if len(repeated):
            raise ValueError(f"{name} lists ids more than once: {name_ids(repeated)}")
    labels = {column[len(PROBABILITY_PREFIX) :] for column in columns}
    ids = set(reference["id"])
    for table, name in zip(tables[1:], names[1:], strict=True):
        other = {column[len(PROBABILITY_PREFIX) :] for column in probability_columns(table)}
        if other != labels:
            raise ValueError(f"{name} and {first} have different label sets: {_one_sided(name, first, other, labels)}")
        other_ids = set(table["id"])
        if other_ids != ids:
            raise ValueError(f"{name} and {first} score different ids: {_one_sided(name, first, other_ids, ids)}")
    return columns


def _check_weights(weights, count: int) -> np.ndarray:
    weights = np.ones(count) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != (count,):
        raise ValueError(f"{weights.size} weights for {count} tables: one weight a table")
    if (weights < 0).any() or not weights.sum() > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights.tolist()}")
    return weights / weights.sum()


def average_probabilities(tables: list[pd.DataFrame], weights=None, names: list[str] | None = None) -> pd.DataFrame:
    """The weighted mean of the tables' ``p::<label>`` columns, record by record (matched by ``id``, not by row).

    ``weights`` (one a table, >= 0, normalised to sum 1; equal when None) and ``names`` (the variants', for error
    messages; "table 0", ... when None). The result is the first table with its ``p::`` columns replaced by the
    mean and ``predicted`` (added if absent) by the mean's arg-max (first of equals, as scoring does); its other
    columns (fold, given or true label) must agree across the tables, since an ensemble of records that differ in
    them is not one record. Different label sets, ids or other columns raise a ValueError naming the difference.
    The mean of copies of one table is that table.
    """
    if not tables:
        raise ValueError("no tables to average")
    names = names or [f"table {index}" for index in range(len(tables))]
    if len(names) != len(tables):
        raise ValueError(f"{len(names)} names for {len(tables)} tables")
    columns = _check_same_records(tables, names)
    weights = _check_weights(weights, len(tables))
    reference = tables[0]
    aligned = [table.set_index("id").loc[reference["id"]] for table in tables]
    shared = [column for column in reference.columns if column not in columns and column not in ("id", "predicted")]
    for table, name in zip(aligned[1:], names[1:], strict=True):
        for column in shared:
            if column not in table.columns:
                raise ValueError(f"{name} lacks column {column!r} that {names[0]} has")
            ours, theirs = aligned[0][column], table[column]
            differs = ~((ours == theirs) | (ours.isna() & theirs.isna())).to_numpy()
            if differs.any():
                record = reference["id"].iloc[int(np.flatnonzero(differs)[0])]
                raise ValueError(f"{name} and {names[0]} differ in {column!r}, first at id {record!r}")
    stacked = np.stack([table[columns].to_numpy(dtype=float) for table in aligned])
    mean = np.tensordot(weights, stacked, axes=1)
    ensemble = reference.copy()
    ensemble[columns] = mean
    labels = [column[len(PROBABILITY_PREFIX) :] for column in columns]
    ensemble["predicted"] = [labels[code] for code in mean.argmax(axis=1)]
    log.info("ensemble of %s (weights %s) over %d records", ", ".join(names), np.round(weights, 3).tolist(), len(mean))
    return ensemble
