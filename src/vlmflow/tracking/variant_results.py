"""A variant's results logged to MLflow: its parent run, its folds' child runs and its final fits' child runs.

Rule ``log_variant_to_mlflow`` hands its inputs over by name (``VariantResultFiles``); the JSON files are
read by ``vlmflow.evaluation.results``, the reader the ablation summary uses too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from vlmflow.evaluation.results import by_fit, by_model, fit_paths, read_json
from vlmflow.recipe.final_models import final_fit_of
from vlmflow.tracking.runs import (
    child_run_id,
    log_results,
    log_variant_results,
    numeric_metrics,
    read_run,
    share_variant_params,
)


@dataclass(frozen=True)
class VariantResultFiles:
    """A variant's result files, named as rule ``log_variant_to_mlflow``'s inputs."""

    parent_run: str
    fold_runs: list[str]
    metrics: str
    fold_metrics: str
    report: str
    confusion_matrix: str
    fold_reports: list[str]
    fold_matrices: list[str]
    correction_scores: str
    corrections: str
    review: str
    pseudo_report: str
    pseudo_labels: str
    decisions: str
    reason_diversity: list[str]  # reason variants only
    submission: str
    submission_metrics: str
    final_metrics: list[str]  # each final model's (a retrained one's across its seeds)
    fit_metrics: list[str]  # each retrained fit's
    retrained_runs: list[str]
    training_sets: list[str]
    general_metrics: list[str]  # the first seed's fit of each model, when final.general_data.held_out is set

    @classmethod
    def named(cls, inputs) -> VariantResultFiles:
        """The files from the rule's inputs, taken by name (anything with ``items()``, as ``snakemake.input``)."""
        return cls(**dict(inputs.items()))

    def artifacts(self) -> list[str]:
        """The files the parent run keeps."""
        return [
            self.confusion_matrix,
            self.report,
            self.metrics,
            self.corrections,
            self.review,
            self.submission,
            self.pseudo_report,
            self.pseudo_labels,
            self.decisions,
            *self.reason_diversity,
        ]

    def fold_artifacts(self) -> list[list[str]]:
        """The files each fold's run keeps, fold by fold."""
        return [list(files) for files in zip(self.fold_reports, self.fold_matrices, strict=True)]


def variant_metrics(
    metrics: dict,
    reports: dict[str, dict],
    reason_diversity: list[dict],
    final_models: dict[str, dict],
    general: dict[str, dict],
) -> dict:
    """The parent run's metrics: metrics.json, then the numbers of each report under its prefix (``reports``:
    prefix -> report), of each reason-diversity report, of each final model (``final.<name>``) and of each final
    model's general ability (``general.<name>``)."""
    merged = dict(metrics)
    for prefix, report in reports.items():
        merged |= numeric_metrics(report, prefix)
    for report in reason_diversity:
        merged |= numeric_metrics(report, "reason_diversity")
    for name, report in final_models.items():
        merged |= numeric_metrics(report, f"final.{name}")
    for name, report in general.items():
        merged |= numeric_metrics(report, f"general.{name}")
    return merged


def fit_metrics(test: dict, training_set: dict, general: dict | None) -> dict[str, float]:
    """A retrained fit's run metrics: its test metrics, its training set's numbers and, for the first seed's fit,
    its general ability (``general``; None for the other seeds)."""
    numbers = numeric_metrics(test, "final") | numeric_metrics(training_set, "training_set")
    if general is not None:
        numbers |= numeric_metrics(general, "general")
    return numbers


def log_variant(files: VariantResultFiles, first_seed: int) -> dict:
    """Log the variant's metrics and files to its parent run (then closed), each fold's to its run and each
    retrained fit's to its run; return what was logged to the parent (``run_id``, ``metrics``)."""
    parent = read_run(files.parent_run)
    general = by_model(files.general_metrics)
    reports = {
        "correction": read_json(files.correction_scores),
        "pseudo": read_json(files.pseudo_report),
        "submission": read_json(files.submission_metrics),
    }
    diversity = [read_json(path) for path in files.reason_diversity]
    metrics = variant_metrics(read_json(files.metrics), reports, diversity, by_model(files.final_metrics), general)
    client = MlflowClient(parent["tracking_uri"])
    children = [*files.fold_runs, *files.retrained_runs]
    # A fine-tune whose run still waits to be sent (vlmflow.tracking.buffer) is named here.
    share_variant_params(client, parent["run_id"], [child_run_id(path) for path in children])
    fits, training_sets = by_fit(files.fit_metrics), fit_paths(files.training_sets)
    for run in files.retrained_runs:
        name, seed = fit = final_fit_of(run)[1:]
        first = general.get(name, {}) if seed == first_seed else None
        numbers = fit_metrics(fits[fit], read_json(training_sets[fit]), first)
        log_results(client, child_run_id(run), numbers, [training_sets[fit]])
    fold_metrics = pd.read_csv(files.fold_metrics).to_dict("records")
    fold_runs = [read_run(path) for path in files.fold_runs]
    log_variant_results(parent, fold_runs, metrics, fold_metrics, files.artifacts(), files.fold_artifacts())
    return {"run_id": parent["run_id"], "metrics": metrics}


def log_variant_files(files: VariantResultFiles, first_seed: int, logged: str | Path) -> None:
    """``log_variant``, and what it logged to the parent written to ``logged`` (JSON)."""
    Path(logged).write_text(json.dumps(log_variant(files, first_seed), indent=2), encoding="utf-8")
