"""Log a variant's metrics and plots to its MLflow parent run and its folds' child runs."""

import json

import pandas as pd

from vlmflow.logfile import log_to
from vlmflow.tracking import log_variant_results, numeric_metrics, read_run

log_to(snakemake.log[0])
parent = read_run(snakemake.input.parent_run)
metrics = json.loads(open(snakemake.input.metrics, encoding="utf-8").read())
metrics |= numeric_metrics(json.loads(open(snakemake.input.correction_scores, encoding="utf-8").read()), "correction")
metrics |= numeric_metrics(json.loads(open(snakemake.input.pseudo_report, encoding="utf-8").read()), "pseudo")
metrics |= numeric_metrics(json.loads(open(snakemake.input.submission_metrics, encoding="utf-8").read()), "submission")
log_variant_results(
    parent,
    [read_run(path) for path in snakemake.input.fold_runs],
    metrics,
    pd.read_csv(snakemake.input.fold_metrics).to_dict("records"),
    [
        snakemake.input.confusion_matrix,
        snakemake.input.report,
        snakemake.input.metrics,
        snakemake.input.corrections,
        snakemake.input.review,
        snakemake.input.submission,
        snakemake.input.pseudo_report,
    ],
    [list(files) for files in zip(snakemake.input.fold_reports, snakemake.input.fold_matrices, strict=True)],
)
with open(snakemake.output.logged, "w", encoding="utf-8") as logged:
    json.dump({"run_id": parent["run_id"], "metrics": metrics}, logged, indent=2)
