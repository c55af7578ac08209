"""Log a variant's metrics and plots to its MLflow parent run, its folds' and its final models' child runs."""

import json

import pandas as pd
from mlflow.tracking import MlflowClient

from vlmflow.recipe.final_models import final_model_of
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged
from vlmflow.tracking.runs import log_results, log_variant_results, numeric_metrics, read_run, share_variant_params


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
final = {final_model_of(path)[1]: read_json(path) for path in snakemake.input.final_metrics}
for name, final_metrics in final.items():
    metrics |= numeric_metrics(final_metrics, f"final.{name}")
# Accuracy on the held-out general records, when final.general_data.held_out is set.
general = {final_model_of(path)[1]: read_json(path) for path in snakemake.input.general_metrics}
for name, general_metrics in general.items():
    metrics |= numeric_metrics(general_metrics, f"general.{name}")
client = MlflowClient(parent["tracking_uri"])
children = [*snakemake.input.fold_runs, *snakemake.input.retrained_runs]
share_variant_params(client, parent["run_id"], [read_run(path)["run_id"] for path in children])
training_sets = {final_model_of(path)[1]: path for path in snakemake.input.training_sets}
for run in snakemake.input.retrained_runs:
    name = final_model_of(run)[1]
    numbers = numeric_metrics(final[name], "final") | numeric_metrics(read_json(training_sets[name]), "training_set")
    numbers |= numeric_metrics(general.get(name, {}), "general")
    log_results(client, read_run(run)["run_id"], numbers, [training_sets[name]])
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
