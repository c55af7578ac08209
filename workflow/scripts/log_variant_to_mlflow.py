"""Log a variant's metrics and plots to its MLflow parent run, its folds' and its final fits' child runs."""

import json

import pandas as pd
from mlflow.tracking import MlflowClient

from vlmflow.recipe.final_models import final_fit_of, final_model_of
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged
from vlmflow.tracking.runs import (
    child_run_id,
    log_results,
    log_variant_results,
    numeric_metrics,
    read_run,
    share_variant_params,
)


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
parent = read_run(snakemake.input.parent_run)
metrics = read_json(snakemake.input.metrics)
metrics |= numeric_metrics(read_json(snakemake.input.correction_scores), "correction")
metrics |= numeric_metrics(read_json(snakemake.input.pseudo_report), "pseudo")
metrics |= numeric_metrics(read_json(snakemake.input.submission_metrics), "submission")
for path in snakemake.input.reason_diversity:  # reason variants only
    metrics |= numeric_metrics(read_json(path), "reason_diversity")
# The parent gets each final model's metrics (a retrained one's across its seeds), each fit's run its own.
for path in snakemake.input.final_metrics:
    metrics |= numeric_metrics(read_json(path), f"final.{final_model_of(path)[1]}")
# Accuracy on the held-out general records (final.general_data.held_out): the first seed's fit of each model.
general = {final_model_of(path)[1]: read_json(path) for path in snakemake.input.general_metrics}
for name, general_metrics in general.items():
    metrics |= numeric_metrics(general_metrics, f"general.{name}")
client = MlflowClient(parent["tracking_uri"])
children = [*snakemake.input.fold_runs, *snakemake.input.retrained_runs]
# A fine-tune whose run still waits to be sent (vlmflow.tracking.buffer) is named here.
share_variant_params(client, parent["run_id"], [child_run_id(path) for path in children])
fits = {final_fit_of(path)[1:]: read_json(path) for path in snakemake.input.fit_metrics}  # by (model, seed)
training_sets = {final_fit_of(path)[1:]: path for path in snakemake.input.training_sets}
for run in snakemake.input.retrained_runs:
    fit = final_fit_of(run)[1:]
    numbers = numeric_metrics(fits[fit], "final") | numeric_metrics(read_json(training_sets[fit]), "training_set")
    if fit[1] == snakemake.params.first_seed:
        numbers |= numeric_metrics(general.get(fit[0], {}), "general")
    log_results(client, child_run_id(run), numbers, [training_sets[fit]])
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
        snakemake.input.pseudo_labels,
        snakemake.input.decisions,
        *snakemake.input.reason_diversity,
    ],
    [list(files) for files in zip(snakemake.input.fold_reports, snakemake.input.fold_matrices, strict=True)],
)
with open(output.logged, "w", encoding="utf-8") as logged:
    json.dump({"run_id": parent["run_id"], "metrics": metrics}, logged, indent=2)
output.commit()
