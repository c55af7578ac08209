"""Stratified group K-fold assignment, seeded, shared by every prompt variant so comparisons are paired."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)


def assign_folds(
    records: pd.DataFrame, n_folds: int, seed: int, groups: pd.Series | None = None
) -> tuple[pd.DataFrame, dict]:
    """Give every labelled record a held-out fold in 0..n_folds-1; return (id, label, fold) and a report.

    ``groups`` (aligned with ``records``; default: every record its own group) names each record's
    duplicate group (``vlmflow.data.duplicates``): a group's records share one fold, so that no fold model
    trains on a copy of an image it predicts. Groups holding a record of a class with at least ``n_folds``
    members go through scikit-learn's StratifiedGroupKFold. The other classes cannot appear in every
    fold: their groups are dealt to distinct folds in turn (seeded), and the report names them. Dealt
    that way, every fold model still trains on a class of two or more; a class of one is missing from the
    training part of the fold that holds its record out, and the report names that fold and record (its
    out-of-fold prediction cannot be its label). Failing instead would make a small class cost the whole
    run, or every class a smaller K.
    """
    if n_folds < 2:
        raise ValueError(f"train.folds must be at least 2, got {n_folds}")
    if len(records) < n_folds:
        raise ValueError(f"{len(records)} training records cannot be split into {n_folds} folds")
    labels = records["label"].astype(str).to_numpy()
    group = records["id"].to_numpy() if groups is None else np.asarray(groups, dtype=object)
    sizes = pd.Series(labels).value_counts()
    is_large_class = pd.Series(labels).map(sizes).to_numpy() >= n_folds
    # A group goes through the stratified split if any of its records does: its records must stay together.
    is_split = pd.Series(is_large_class).groupby(group).transform("any").to_numpy()
    fold = np.empty(len(records), dtype=int)
    if is_split.any():
        split = np.flatnonzero(is_split)
        n_groups = len(set(group[split]))
        if n_groups < n_folds:
            raise ValueError(
                f"the training records form {n_groups} duplicate group(s), fewer than train.folds = {n_folds}; "
                "lower train.folds or data.near_duplicate_distance"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(split)), labels[split], group[split])):
            fold[split[held_out]] = index
    dealt = np.flatnonzero(~is_split)
    if len(dealt):
        # Deal whole groups, grouped by class and shuffled within it, starting at the smallest fold.
        units = pd.DataFrame({"group": group[dealt], "label": labels[dealt]}).drop_duplicates("group")
        order = np.random.default_rng(seed).permutation(len(units))
        units = units.iloc[order].sort_values("label", kind="stable")
        start = np.bincount(fold[is_split], minlength=n_folds).argmin() if is_split.any() else 0
        fold_of_group = dict(zip(units["group"], (start + np.arange(len(units))) % n_folds, strict=True))
        fold[dealt] = [fold_of_group[g] for g in group[dealt]]
    folds = pd.DataFrame({"id": records["id"].to_numpy(), "label": labels, "fold": fold})
    class_sizes = folds["label"].value_counts().sort_index()
    small = {label: int(size) for label, size in class_sizes.items() if size < n_folds}
    if small:
        log.warning(
            "classes with fewer records than train.folds = %d, dealt to distinct folds (each record still held "
            "out once): %s; to hold out every class in every fold, lower train.folds or add records",
            n_folds,
            small,
        )
    untrained = classes_missing_from_a_training_part(folds)
    for label, missing in untrained.items():
        log.warning(
            "class %s: fold %d holds out all its records (%s), so that fold's model never sees the class and "
            "their out-of-fold predictions cannot be it; add records of the class, or merge or drop it",
            label,
            missing["fold"],
            ", ".join(missing["ids"]),
        )
    group_sizes = pd.Series(group).value_counts()
    report = {
        "n_folds": n_folds,
        "seed": seed,
        "n_groups": int(len(group_sizes)),
        "n_groups_of_two_or_more": int((group_sizes > 1).sum()),
        "records_in_groups_of_two_or_more": int(group_sizes[group_sizes > 1].sum()),
        "fold_sizes": {int(k): int(v) for k, v in folds["fold"].value_counts().sort_index().items()},
        "class_sizes": {label: int(size) for label, size in class_sizes.items()},
        "classes_smaller_than_n_folds": small,
        "classes_missing_from_a_training_part": untrained,
    }
    return folds, report


def classes_missing_from_a_training_part(folds: pd.DataFrame) -> dict[str, dict]:
    """Classes whose records all sit in one fold: that fold's training part lacks them (a class of one)."""
    return {
        str(label): {"fold": int(group["fold"].iloc[0]), "ids": [str(i) for i in group["id"]]}
        for label, group in folds.groupby("label", sort=True)
        if group["fold"].nunique() == 1
    }


def fold_training_part(prompts: pd.DataFrame, folds: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The labelled training prompts whose record is not held out in ``fold``."""
    train = prompts[(prompts["split"] == "train") & prompts["target"].notna()]
    return train[~train["id"].isin(folds.loc[folds["fold"] == fold, "id"])]


def held_out_part(prompts: pd.DataFrame, folds: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The training prompts held out in ``fold``: the fold model predicts them out of fold."""
    train = prompts[prompts["split"] == "train"]
    return train[train["id"].isin(folds.loc[folds["fold"] == fold, "id"])]
