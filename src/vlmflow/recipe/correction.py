"""Label correction from out-of-fold probabilities: flag, review, override, apply, score.

The recipe corrects training labels where the K fold models disagree with them; a public solution
hand-corrected about 3% of the labels. Flags come from the fold models' held-out probabilities
(``oof_probs.parquet``), a person may accept, reject or relabel them in an overrides CSV, and
``apply_corrections`` turns both into a corrected training table with the same records.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vlmflow.evaluation.metrics import PROBABILITY_PREFIX, probability_columns
from vlmflow.recipe.review_page import review_page

log = logging.getLogger(__name__)

METHODS = ("disagreement", "confident_learning", "none")
MODES = ("auto", "review")
ACTIONS = ("accept", "reject", "relabel")
ISSUE_COLUMNS = ["id", "given", "proposed", "confidence", "method"]
OVERRIDE_COLUMNS = ["id", "action", "label"]
DECISION_COLUMNS = ["id", "given", "proposed", "final", "decision", "source"]


def _probability_matrix(oof: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The ``p::`` columns in the label file's order (cleanlab reads class k as column k)."""
    present = {column[len(PROBABILITY_PREFIX) :] for column in probability_columns(oof)}
    missing = [label for label in labels if label not in present]
    if missing:
        raise ValueError(f"out-of-fold table has no probability column for labels {missing}")
    return oof[[PROBABILITY_PREFIX + label for label in labels]].to_numpy(dtype=float)


def _confident_learning(given: pd.Series, probabilities: np.ndarray, labels: list[str]) -> np.ndarray:
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise ValueError(f"given labels {unknown} have no probability column; known labels: {labels}")
    codes = given.map({label: index for index, label in enumerate(labels)}).to_numpy(dtype=int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # prune_by_noise_rate (cleanlab's default) removes, per given class, as many records as the
        # confident joint estimates are mislabelled, lowest margin first: it flags only the estimated
        # number of errors, not every off-diagonal record. n_jobs=1: ~700 rows need no process pool,
        # and warnings raised inside pool workers would be lost.
        mask = cleanlab_find_label_issues(
            labels=codes, pred_probs=probabilities, filter_by="prune_by_noise_rate", n_jobs=1
        )
    for warning in caught:  # classes absent from train (two in MIRE) only warn "too few examples"
        log.info("cleanlab: %s", warning.message)
    present = set(given)
    absent = [label for label in labels if label not in present]
    if absent:
        # cleanlab gives absent classes an unreachable threshold: it never flags a record as one of them.
        log.info("classes with no given examples (confident learning cannot propose them): %s", absent)
    return mask


def find_label_issues(
    oof: pd.DataFrame, labels: list[str], method: str, *, min_confidence: float = 0.0
) -> pd.DataFrame:
    """One row per flagged record (``ISSUE_COLUMNS``), most confident proposal first.

    ``disagreement`` flags every record whose fold model's argmax differs from ``given_label``;
    ``confident_learning`` asks cleanlab which records are likely mislabelled. Both propose the
    argmax with its probability as confidence and drop proposals below ``min_confidence``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown label-correction method {method!r}; valid: {list(METHODS)}")
    if method == "none" or oof.empty:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    probabilities = _probability_matrix(oof, labels)
    argmax = probabilities.argmax(axis=1)
    proposed = np.asarray(labels, dtype=object)[argmax]
    confidence = probabilities[np.arange(len(oof)), argmax]
    given = oof["given_label"].astype(str).reset_index(drop=True)
    flagged = proposed != given.to_numpy()  # a proposal equal to the given label corrects nothing
    # A class's only record was predicted by the one fold model trained without the class (vlmflow.data.folds):
    # its disagreement is no evidence of a wrong label, and relabelling it would delete the class.
    only_record = (given.map(given.value_counts()) == 1).to_numpy()
    if (flagged & only_record).any():
        log.info("not flagged, the only record of their class: %s", ", ".join(oof["id"][flagged & only_record]))
    flagged &= ~only_record
    if method == "confident_learning":
        flagged &= _confident_learning(given, probabilities, labels)
    flagged &= confidence >= min_confidence
    issues = pd.DataFrame(
        {"id": oof["id"].to_numpy()[flagged], "given": given[flagged].to_numpy(), "proposed": proposed[flagged]}
    ).assign(confidence=confidence[flagged], method=method)
    log.info("%s flagged %d of %d records", method, len(issues), len(oof))
    return issues.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)


def with_duplicate_conflicts(issues: pd.DataFrame, conflicts: pd.DataFrame) -> pd.DataFrame:
    """The fold models' flags, then the label conflicts of exact duplicate images (``vlmflow.data.duplicates``,
    method ``duplicate_conflict``) of the records they did not flag: one proposal per record."""
    new = conflicts[~conflicts["id"].isin(issues["id"])]
    if len(new) < len(conflicts):
        log.info("label conflicts also flagged by the fold models (their flag kept): %d", len(conflicts) - len(new))
    log.info("%d label conflict(s) of duplicate images added to the flags", len(new))
    if issues.empty or new.empty:  # concatenating an empty table would drop its column types
        return (new[ISSUE_COLUMNS] if issues.empty else issues).reset_index(drop=True)
    return pd.concat([issues, new[ISSUE_COLUMNS]], ignore_index=True)


def write_override_template(path: str | Path) -> None:
    """An overrides CSV with the header only; never overwrites a file someone may have edited."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(",".join(OVERRIDE_COLUMNS) + "\n", encoding="utf-8")


def read_overrides(path: str | Path, labels: list[str]) -> pd.DataFrame:
    """The overrides (``id, action, label``), validated; a missing file means none. Errors name the line."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=OVERRIDE_COLUMNS)
    # Strings throughout (ids like "007" stay as written); blank lines kept so index + 2 is the file line.
    table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    missing = [column for column in OVERRIDE_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected header {','.join(OVERRIDE_COLUMNS)}")
    table = table[OVERRIDE_COLUMNS].apply(lambda column: column.str.strip())
    table = table[(table != "").any(axis=1)]
    for index, row in table.iterrows():
        where = f"{path} line {index + 2}"
        if not row["id"]:
            raise ValueError(f"{where}: empty id")
        if row["action"] not in ACTIONS:
            raise ValueError(f"{where}: action {row['action']!r} is not one of {list(ACTIONS)}")
        if row["action"] == "relabel" and row["label"] not in labels:
            raise ValueError(f"{where}: relabel to {row['label']!r}, which is not in the label set")
        if row["action"] != "relabel" and row["label"]:
            # An "accept" with a label would be ambiguous: accept the proposal, or set this label?
            raise ValueError(f"{where}: label is only read with action relabel (use relabel to set it)")
    repeated = table.loc[table["id"].duplicated(keep=False), "id"]
    if not repeated.empty:
        lines = [index + 2 for index in repeated.index]
        raise ValueError(f"{path}: ids overridden more than once: {sorted(set(repeated))} (lines {lines})")
    return table.reset_index(drop=True)


def apply_corrections(
    train: pd.DataFrame, issues: pd.DataFrame, overrides: pd.DataFrame, mode: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training table with corrected labels (same records, same order) and one decision per id.

    ``auto`` applies every flag the overrides do not reject; ``review`` applies only accepted flags;
    ``relabel`` always sets its label. Decisions: applied, rejected, not_reviewed, relabelled, or
    not_flagged (an accept or reject for an id that is no longer flagged, e.g. after retraining).
    """
    if mode not in MODES:
        raise ValueError(f"unknown correction mode {mode!r}; valid: {list(MODES)}")
    given = train.set_index("id")["label"]
    for name, ids in (("overrides", overrides["id"]), ("issues", issues["id"])):
        unknown = sorted(set(ids) - set(given.index))
        if unknown:
            raise ValueError(f"{name} name ids that are not training records: {unknown}")
    override = overrides.set_index("id")
    proposals = issues.set_index("id")["proposed"]
    rows = []
    for record in list(proposals.index) + [i for i in override.index if i not in proposals.index]:
        action = override["action"].get(record)
        proposed = proposals.get(record)
        final, source = given[record], "override" if action else "method"
        if action == "relabel":
            final, decision = override.at[record, "label"], "relabelled"
        elif proposed is None:
            decision = "not_flagged"
            log.warning("override %s for %s, which is not flagged: nothing to do", action, record)
        elif action == "reject":
            decision = "rejected"
        elif action == "accept" or mode == "auto":
            final, decision = proposed, "applied"
        else:
            decision = "not_reviewed"
        row = {"id": record, "given": given[record], "proposed": proposed, "final": final}
        rows.append(row | {"decision": decision, "source": source})
    decisions = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    corrected = train.copy()
    final = corrected["id"].map(decisions.set_index("id")["final"])
    corrected["label"] = final.fillna(corrected["label"]).astype(train["label"].dtype)
    assert len(corrected) == len(train)  # a correction changes labels, never records
    changed = int((corrected["label"] != train["label"]).sum())
    log.info("%s mode: %d flagged, %d overrides, %d labels changed", mode, len(issues), len(overrides), changed)
    return corrected, decisions


def noise_detection_scores(issues: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float | int]:
    """How well the flags find the demo's planted flips; 0.0 (not NaN) for ratios with a zero denominator."""
    train = truth[truth["split"] == "train"]
    planted = set(train.loc[train["flipped"].astype(str).str.lower().isin(["true", "1"]), "id"])
    flagged = set(issues["id"])
    found = len(flagged & planted)
    true_label = train.set_index("id")["label"]
    right = int((issues["proposed"].to_numpy() == issues["id"].map(true_label).to_numpy()).sum())
    return {
        "precision": found / len(flagged) if flagged else 0.0,
        "recall": found / len(planted) if planted else 0.0,
        "proposal_accuracy": right / len(issues) if len(issues) else 0.0,
        "flagged": len(flagged),
        "planted": len(planted),
        "found": found,
    }


def correction_summary(issues: pd.DataFrame, decisions: pd.DataFrame, truth: pd.DataFrame | None) -> dict:
    """Counts of flagged and applied corrections, plus (demo) how well the flags find the planted flips."""
    applied = decisions["decision"].isin(["applied", "relabelled"]).sum() if len(decisions) else 0
    summary = {"flagged": int(len(issues)), "applied": int(applied)}
    return summary | noise_detection_scores(issues, truth) if truth is not None else summary


@dataclass(frozen=True)
class Correction:
    """What the correction stage decided: flags, the decision per flag, the corrected table, the counts."""

    issues: pd.DataFrame
    decisions: pd.DataFrame
    corrected: pd.DataFrame
    summary: dict

    def write(self, issues: str | Path, decisions: str | Path, corrected: str | Path, scores: str | Path) -> None:
        """The flags and the decisions as CSV, the corrected table as Parquet, the counts as JSON."""
        self.issues.to_csv(issues, index=False)
        self.decisions.to_csv(decisions, index=False)
        self.corrected.to_parquet(corrected, index=False)
        Path(scores).write_text(json.dumps(self.summary, indent=2) + "\n", encoding="utf-8")


def correct_labels(
    train: pd.DataFrame,
    out_of_fold: pd.DataFrame,
    labels: list[str],
    *,
    method: str,
    min_confidence: float,
    overrides_path: str,
    apply: str,
    ocr_text: dict[str, str],
    review_html: str | Path,
    truth: pd.DataFrame | None = None,
    duplicate_conflicts: pd.DataFrame | None = None,
) -> Correction:
    """The correction stage in one call: flag the labels the fold models disagree with and those of
    ``duplicate_conflicts`` (copies of one image with different labels), read the user's overrides, apply
    both, write the review page (``ocr_text`` by record id) and count (with ``truth``, the demo's, how well
    the flags find the planted flips)."""
    issues = find_label_issues(out_of_fold, labels, method, min_confidence=min_confidence)
    if duplicate_conflicts is not None:
        issues = with_duplicate_conflicts(issues, duplicate_conflicts)
    overrides = read_overrides(overrides_path, labels)
    corrected, decisions = apply_corrections(train, issues, overrides, apply)
    review_page(issues, train, ocr_text, Path(review_html), overrides_path, labels=labels, overrides=overrides)
    return Correction(issues, decisions, corrected, correction_summary(issues, decisions, truth))
