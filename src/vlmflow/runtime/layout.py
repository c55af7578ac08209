"""The results layout: where every stage writes, as Snakemake patterns, one table per rule file.

The rules take their inputs and outputs from these tables (``output: model=TRAIN_OUTPUTS["model"]``), so a
path is written here once; a new output is a new entry here. A table's keys are the rule's output names where
they are unique in the stage. ``{variant}``, ``{fold}``, ... are the rules' wildcards: ``fill`` fills some of
them and leaves the others to Snakemake, ``str.format`` fills them all. Which final models exist and whose a
final model's path is stay in ``recipe.final_models``, built on the folders below. It lives in ``runtime``, not
``recipe``: every stage writes here, from ingestion to the report.

Standard library only: common.smk imports it when Snakemake starts.
"""

from __future__ import annotations

import re

RESULTS = "results"
DATA_DIR = "results/data"
OCR_DIR = "results/ocr"
FOLDS_DIR = "results/folds"
VARIANT_DIR = "results/{variant}"
FOLD_DIR = "results/{variant}/fold{fold}"
# A final model: average_folds, or one round of a retrained fit (retrain/<steps>/seed<s>/round<n>).
FINAL_MODEL_DIR = "results/{variant}/{final_model}"
AVERAGED_DIR = "results/{variant}/average_folds"
RETRAINED_DIR = "results/{variant}/retrain/{steps}"  # a retrained model: its seeds' fits and what spans them
ROUND_DIR = "results/{variant}/retrain/{steps}/seed{seed}/round{round}"
BASE_MODEL_DIR = "results/base_model"
MLFLOW_ARTIFACTS = "results/mlflow-artifacts"  # the MLflow experiment's artifact location

INGEST_OUTPUTS = {
    "records": f"{DATA_DIR}/{{split}}.parquet",
    "rejected": f"{DATA_DIR}/{{split}}_rejected.csv",
    "counts": f"{DATA_DIR}/{{split}}_counts.json",
}
DUPLICATES_OUTPUTS = {
    "exact": f"{DATA_DIR}/duplicates.csv",
    "near": f"{DATA_DIR}/near_duplicates.csv",
    "groups": f"{DATA_DIR}/duplicate_groups.csv",
    "conflicts": f"{DATA_DIR}/label_conflicts.csv",
    "test_copies": f"{DATA_DIR}/test_copies_of_train.csv",
    "summary": f"{DATA_DIR}/duplicates.json",
}
OCR_OUTPUTS = {
    "shard": f"{OCR_DIR}/shard{{shard}}.parquet",
    "text": f"{OCR_DIR}/ocr.parquet",
}
PROMPTS_OUTPUTS = {
    "prompts": f"{VARIANT_DIR}/prompts.parquet",
    "dataset": f"{VARIANT_DIR}/llamafactory/train.json",
    "dataset_info": f"{VARIANT_DIR}/llamafactory/dataset_info.json",
}
TEACHER_OUTPUTS = {
    "reasons": f"{VARIANT_DIR}/teacher/reasons.parquet",
    "reasons_failed": f"{VARIANT_DIR}/teacher/reasons_failed.csv",
    "descriptions": f"{VARIANT_DIR}/teacher/descriptions.parquet",
    "descriptions_failed": f"{VARIANT_DIR}/teacher/descriptions_failed.csv",
    "reason_diversity": f"{VARIANT_DIR}/reason_diversity.json",
}
FOLDS_OUTPUTS = {
    "folds": f"{FOLDS_DIR}/folds.csv",
    "report": f"{FOLDS_DIR}/report.json",
}
ACCOUNTING_OUTPUTS = {
    "stages": f"{VARIANT_DIR}/accounting/stages.json",
    "issues": f"{VARIANT_DIR}/accounting/rejected_and_flagged.csv",
}
MACHINE_OUTPUTS = {
    "machine": f"{RESULTS}/machine.json",
}
TRAIN_OUTPUTS = {
    "experiment": f"{RESULTS}/mlflow_experiment.json",
    "variant_run": f"{VARIANT_DIR}/mlflow_run.json",
    "model": f"{FOLD_DIR}/model",
    "config": f"{FOLD_DIR}/llamafactory.yaml",
    "run": f"{FOLD_DIR}/mlflow_run.json",
}
SCORE_OUTPUTS = {
    "out_of_fold": f"{FOLD_DIR}/oof_probs.parquet",
    "test_shard": f"{FOLD_DIR}/test_shards/{{test_shard}}.parquet",  # shard 0 is score_fold's
    "test": f"{FOLD_DIR}/test_probs.parquet",
}
EVALUATE_OUTPUTS = {
    "metrics": f"{VARIANT_DIR}/metrics.json",
    "fold_metrics": f"{VARIANT_DIR}/fold_metrics.csv",
    "out_of_fold": f"{VARIANT_DIR}/oof_probs.parquet",
    "test": f"{VARIANT_DIR}/test_probs.parquet",  # the fold ensemble's
    "report": f"{VARIANT_DIR}/per_class_report.csv",
    "confusion_matrix": f"{VARIANT_DIR}/confusion_matrix.png",
    "fold_report": f"{FOLD_DIR}/per_class_report.csv",
    "fold_matrix": f"{FOLD_DIR}/confusion_matrix.png",
    "logged": f"{VARIANT_DIR}/mlflow_logged.json",
    "summary_table": f"{RESULTS}/summary.csv",
    "summary_markdown": f"{RESULTS}/summary.md",
    "warnings": f"{RESULTS}/warnings.txt",
    "summary_chart": f"{RESULTS}/summary.png",
    "summary_run": f"{RESULTS}/summary_mlflow_run.json",
}
RECIPE_OUTPUTS = {
    "corrections": f"{VARIANT_DIR}/label_corrections.csv",
    "decisions": f"{VARIANT_DIR}/label_decisions.csv",
    "corrected": f"{VARIANT_DIR}/train_corrected.parquet",
    "review": f"{VARIANT_DIR}/label_review.html",
    "correction_scores": f"{VARIANT_DIR}/correction_scores.json",
    "pseudo_labels": f"{VARIANT_DIR}/pseudo_labels.csv",
    "pseudo_report": f"{VARIANT_DIR}/pseudo_labels.json",
    "submission": f"{VARIANT_DIR}/submission.csv",
    "submission_metrics": f"{VARIANT_DIR}/submission_metrics.json",
    "averaged_model": f"{AVERAGED_DIR}/model",
    "final_model": f"{FINAL_MODEL_DIR}/model",
    "final_test": f"{FINAL_MODEL_DIR}/test_probs.parquet",
    "final_metrics": f"{FINAL_MODEL_DIR}/test_metrics.json",
    "across_seeds": f"{RETRAINED_DIR}/test_metrics_across_seeds.json",
}
RETRAIN_OUTPUTS = {
    "prompts": f"{ROUND_DIR}/train_prompts.parquet",
    "general": f"{ROUND_DIR}/general_records.json",
    "training_set": f"{ROUND_DIR}/training_set.json",
    "model": f"{ROUND_DIR}/model",
    "config": f"{ROUND_DIR}/llamafactory.yaml",
    "run": f"{ROUND_DIR}/mlflow_run.json",
    "test": f"{ROUND_DIR}/test_probs.parquet",  # RECIPE_OUTPUTS["final_test"] of the round (score_final_model)
    "pseudo_labels": f"{ROUND_DIR}/pseudo_labels.csv",
    "pseudo_report": f"{ROUND_DIR}/pseudo_labels.json",
}
GENERAL_OUTPUTS = {
    "metrics": f"{FINAL_MODEL_DIR}/general_metrics.json",
    "base_metrics": f"{BASE_MODEL_DIR}/general_metrics.json",
}
REPORT_OUTPUTS = {
    "loss_curves": f"{VARIANT_DIR}/loss_curves.png",
    "pseudo_labels_plot": f"{VARIANT_DIR}/pseudo_labels.png",
    "pseudo_label_counts": f"{VARIANT_DIR}/pseudo_label_counts.csv",
    "review_page": f"{VARIANT_DIR}/label_review_embedded.html",
    "summary_page": f"{RESULTS}/summary.html",
    "run_config": f"{RESULTS}/run_config.yaml",
    "run_config_page": f"{RESULTS}/run_config.html",
}

# Every stage's table, by rule file (workflow/rules/<stage>.smk): for tests and for reading.
STAGE_OUTPUTS = {
    "ingest": INGEST_OUTPUTS,
    "duplicates": DUPLICATES_OUTPUTS,
    "ocr": OCR_OUTPUTS,
    "prompts": PROMPTS_OUTPUTS,
    "teacher": TEACHER_OUTPUTS,
    "folds": FOLDS_OUTPUTS,
    "accounting": ACCOUNTING_OUTPUTS,
    "machine": MACHINE_OUTPUTS,
    "train": TRAIN_OUTPUTS,
    "score": SCORE_OUTPUTS,
    "evaluate": EVALUATE_OUTPUTS,
    "recipe": RECIPE_OUTPUTS,
    "retrain": RETRAIN_OUTPUTS,
    "general": GENERAL_OUTPUTS,
    "report": REPORT_OUTPUTS,
}

WILDCARD = re.compile(r"\{(\w+)\}")


def wildcards(pattern: str) -> list[str]:
    """The wildcards of a pattern, in order."""
    return WILDCARD.findall(pattern)


def fill(pattern: str, **values: object) -> str:
    """``pattern`` with the named wildcards filled in and the others left as they are, for Snakemake
    (``expand(..., allow_missing=True)`` for one path): ``fill(FOLD_DIR, fold=0)`` is ``results/{variant}/fold0``."""
    return WILDCARD.sub(lambda match: str(values[match[1]]) if match[1] in values else match[0], pattern)


def file_in(folder: str, pattern: str) -> str:
    """A final model's, a round's or a retrained model's file (a pattern under ``FINAL_MODEL_DIR``, ``ROUND_DIR`` or
    ``RETRAINED_DIR``) in one such folder, as ``recipe.final_models`` names it: ``file_in("results/b/average_folds",
    RECIPE_OUTPUTS["final_test"])`` is ``results/b/average_folds/test_probs.parquet``."""
    for parent in (FINAL_MODEL_DIR, ROUND_DIR, RETRAINED_DIR):  # a round's folder lies in its retrained model's
        if pattern.startswith(f"{parent}/"):
            return folder + pattern.removeprefix(parent)
    raise ValueError(f"{pattern}: not a file of a final model, a round or a retrained model")
