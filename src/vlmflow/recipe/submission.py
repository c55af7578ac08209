"""The MIRE submission file: a ``utf-8-sig`` CSV with columns ``id,predict``, one row per test record."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from vlmflow.data.messages import name_ids

log = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ["id", "predict"]
# The organisers' format; the BOM also lets spreadsheet tools read the Chinese labels as UTF-8.
SUBMISSION_ENCODING = "utf-8-sig"


class SubmissionError(ValueError):
    """The predictions do not give exactly one valid label per test id."""


def _problems(predictions: pd.DataFrame, test_ids: list[str], labels: list[str]) -> list[str]:
    """Every way the predictions miss the format, each naming its ids, so one run shows them all."""
    problems = []
    repeated_tests = pd.Series(test_ids)[pd.Series(test_ids).duplicated()].unique()
    if len(repeated_tests):
        problems.append(f"test ids listed more than once: {name_ids(repeated_tests)}")
    predicted_ids = predictions["id"]
    expected, given = set(test_ids), set(predicted_ids)
    missing = [i for i in dict.fromkeys(test_ids) if i not in given]
    if missing:
        problems.append(f"{len(missing)} test id(s) without a prediction: {name_ids(missing)}")
    repeated = predicted_ids[predicted_ids.duplicated()].unique()
    if len(repeated):
        problems.append(f"{len(repeated)} id(s) predicted more than once: {name_ids(repeated)}")
    extra = [i for i in predicted_ids.unique() if i not in expected]
    if extra:
        problems.append(f"{len(extra)} predicted id(s) are not test ids: {name_ids(extra)}")
    invalid = predictions[~predictions["predicted"].isin(set(labels))]
    if len(invalid):
        pairs = [f"{i!r}: {label!r}" for i, label in zip(invalid["id"], invalid["predicted"], strict=True)]
        shown = ", ".join(pairs[:10]) + (f" and {len(pairs) - 10} more" if len(pairs) > 10 else "")
        problems.append(f"{len(invalid)} prediction(s) are not labels of the label set: {shown}")
    return problems


def write_submission(predictions: pd.DataFrame, test_ids: list[str], labels: list[str], path: str | Path) -> Path:
    """Write ``predictions`` (``id``, ``predicted``) as the submission CSV, rows in ``test_ids`` order.

    Raises ``SubmissionError`` naming the ids when a test id is missing or predicted twice, a
    prediction names an id outside the test set, or a label outside ``labels``.
    """
    problems = _problems(predictions, list(test_ids), labels)
    if problems:
        raise SubmissionError("cannot write the submission:\n  " + "\n  ".join(problems))
    by_id = predictions.set_index("id")["predicted"]
    submission = pd.DataFrame({"id": list(test_ids), "predict": by_id.loc[list(test_ids)].to_numpy()})
    path = Path(path)
    submission.to_csv(path, index=False, encoding=SUBMISSION_ENCODING)
    log.info("wrote %d predictions over %d labels to %s", len(submission), submission["predict"].nunique(), path)
    return path


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV back as strings (ids like ``0123`` or ``NA`` stay as written)."""
    table = pd.read_csv(path, encoding=SUBMISSION_ENCODING, dtype=str, keep_default_na=False)
    if list(table.columns) != SUBMISSION_COLUMNS:
        raise SubmissionError(f"{path}: columns are {list(table.columns)}, expected {SUBMISSION_COLUMNS}")
    return table
