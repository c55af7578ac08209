"""Classification metrics: the competition's weighted F1, accuracy, macro F1, per-class report, confusion matrix."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score  # noqa: E402

from vlmflow.evaluation.sanity import no_image_baselines  # noqa: E402

log = logging.getLogger(__name__)

PROBABILITY_PREFIX = "p::"


def probability_columns(table: pd.DataFrame) -> list[str]:
    return [column for column in table.columns if column.startswith(PROBABILITY_PREFIX)]


def classification_metrics(truth: pd.Series, predicted: pd.Series) -> dict[str, float]:
    """The competition metric (sklearn's weighted F1) and two companions, over the given records."""
    return {
        "weighted_f1": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "n": int(len(truth)),
    }


def per_class_report(truth: pd.Series, predicted: pd.Series, labels: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per label, labels in the label file's order."""
    report = classification_report(truth, predicted, labels=labels, output_dict=True, zero_division=0)
    rows = [{"label": label, **report[label]} for label in labels]
    return pd.DataFrame(rows).rename(columns={"f1-score": "f1"})


def mean_fold_probabilities(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Average the fold models' probabilities per id (test images are scored by every fold)."""
    stacked = pd.concat(tables, ignore_index=True)
    columns = probability_columns(stacked)
    mean = stacked.groupby("id", sort=False)[columns].mean().reset_index()
    mean["predicted"] = [column[len(PROBABILITY_PREFIX) :] for column in mean[columns].idxmax(axis=1)]
    return mean


def cjk_font() -> str | None:
    """Register a CJK font with matplotlib so Chinese labels do not render as boxes."""
    from vlmflow.runtime.fonts import find_cjk_font

    try:
        path = find_cjk_font()
    except FileNotFoundError:
        log.warning("no CJK font found: Chinese labels in plots will not render")
        return None
    font_manager.fontManager.addfont(str(path))
    return font_manager.FontProperties(fname=str(path)).get_name()


def plot_confusion_matrix(truth: pd.Series, predicted: pd.Series, labels: list[str], path: str | Path, title: str):
    """A confusion matrix image, rows true labels, columns predicted, counts in the cells."""
    matrix = confusion_matrix(truth, predicted, labels=labels)
    font = cjk_font()
    if font:
        plt.rcParams["font.family"] = font
    figure, axes = plt.subplots(figsize=(12, 11))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    for row, column in zip(*np.nonzero(matrix), strict=True):
        colour = "white" if matrix[row, column] > matrix.max() / 2 else "black"
        axes.text(column, row, int(matrix[row, column]), ha="center", va="center", fontsize=6, color=colour)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def evaluate_variant(
    out_of_fold: dict[int, pd.DataFrame],
    test_by_fold: list[pd.DataFrame],
    given_labels: pd.DataFrame,
    truth: pd.DataFrame | None,
) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Score one variant's K fold models.

    ``out_of_fold`` maps each fold to its held-out predictions (``id``, ``predicted``, ``p::*``);
    ``given_labels`` has the training labels as given (id, label), the ones the models trained on;
    ``truth`` (demo only) has id, split and the true label. Returns the metrics, per-fold metrics,
    all out-of-fold predictions and the fold-averaged test predictions.
    """
    given = given_labels.set_index("id")["label"]
    oof = pd.concat([table.assign(fold=fold) for fold, table in out_of_fold.items()], ignore_index=True)
    oof["given_label"] = oof["id"].map(given)
    metrics = {
        f"oof_{key}": value for key, value in classification_metrics(oof["given_label"], oof["predicted"]).items()
    }
    # Whether the models learned anything at all: the interval, and predictors that ignore the image.
    metrics |= no_image_baselines(oof["given_label"], oof["predicted"], "oof")
    fold_rows = [
        {"fold": fold, **classification_metrics(table["id"].map(given), table["predicted"])}
        for fold, table in sorted(out_of_fold.items())
    ]
    test = mean_fold_probabilities(test_by_fold)
    if truth is not None:
        true = truth.set_index("id")["label"]
        oof["true_label"] = oof["id"].map(true)
        truth_oof = classification_metrics(oof["true_label"], oof["predicted"])
        metrics |= {f"oof_vs_truth_{key}": value for key, value in truth_oof.items()}
        test["true_label"] = test["id"].map(true)
        metrics |= {
            f"test_{key}": value for key, value in classification_metrics(test["true_label"], test["predicted"]).items()
        }
    return metrics, pd.DataFrame(fold_rows), oof, test


FOLD_IN_PATH = re.compile(r"fold(\d+)")


def read_out_of_fold(paths: Iterable[str]) -> dict[int, pd.DataFrame]:
    """Each fold's held-out predictions, by the fold number its path names (``.../fold<k>/...``)."""
    return {int(FOLD_IN_PATH.search(str(path))[1]): pd.read_parquet(path) for path in paths}


def write_variant_evaluation(
    evaluation: tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame], labels: list[str], variant: str, outputs
) -> None:
    """Write what ``evaluate_variant`` returned to ``outputs``, the rule's outputs by name: the per-class report
    (``report``) and confusion matrix (``confusion_matrix``) out of fold, each fold's (``fold_reports``,
    ``fold_matrices``), the out-of-fold and the fold-averaged test predictions (``out_of_fold``, ``test``), the
    per-fold metrics (``fold_metrics``, CSV) and the metrics (``metrics``, JSON)."""
    metrics, fold_metrics, oof, test = evaluation
    per_class_report(oof["given_label"], oof["predicted"], labels).to_csv(outputs.report, index=False)
    title = f"{variant}: out of fold, weighted F1 {metrics['oof_weighted_f1']:.3f}"
    plot_confusion_matrix(oof["given_label"], oof["predicted"], labels, outputs.confusion_matrix, title)
    write_fold_reports(oof, labels, outputs.fold_reports, outputs.fold_matrices)
    oof.to_parquet(outputs.out_of_fold, index=False)
    test.to_parquet(outputs.test, index=False)
    fold_metrics.to_csv(outputs.fold_metrics, index=False)
    with open(outputs.metrics, "w", encoding="utf-8") as metrics_file:
        json.dump(metrics, metrics_file, indent=2)


def write_fold_reports(oof: pd.DataFrame, labels: list[str], reports: list[str], matrices: list[str]) -> None:
    """Per fold (in order): the held-out per-class report (CSV) and confusion matrix (PNG)."""
    for fold, (report_path, matrix_path) in enumerate(zip(reports, matrices, strict=True)):
        part = oof[oof["fold"] == fold]
        per_class_report(part["given_label"], part["predicted"], labels).to_csv(report_path, index=False)
        plot_confusion_matrix(part["given_label"], part["predicted"], labels, matrix_path, f"fold {fold}, held out")


def test_set_metrics(table: pd.DataFrame, truth: pd.DataFrame | None, column: str = "predicted") -> dict:
    """Test predictions (``id`` and ``column``) against the truth file (the demo's); counts only without one."""
    metrics: dict = {"n": int(len(table))}
    if truth is not None:
        true = table["id"].map(truth.set_index("id")["label"])
        metrics |= {f"test_{key}": value for key, value in classification_metrics(true, table[column]).items()}
    return metrics
