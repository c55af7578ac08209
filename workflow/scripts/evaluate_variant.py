"""Out-of-fold and test metrics of one variant, its per-class report and confusion matrix."""

import json
import re

import pandas as pd

from vlmflow.data.labels import label_names, load_labels
from vlmflow.evaluation.metrics import evaluate_variant, per_class_report, plot_confusion_matrix, write_fold_reports
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
out_of_fold = {int(re.search(r"fold(\d+)", path)[1]): pd.read_parquet(path) for path in snakemake.input.out_of_fold}
truth = pd.read_csv(snakemake.input.truth) if snakemake.input.truth else None
metrics, fold_metrics, oof, test = evaluate_variant(
    out_of_fold,
    [pd.read_parquet(path) for path in snakemake.input.test],
    pd.read_parquet(snakemake.input.train_records),
    truth,
)
labels = label_names(load_labels(snakemake.input.labels))
per_class_report(oof["given_label"], oof["predicted"], labels).to_csv(output.report, index=False)
title = f"{snakemake.wildcards.variant}: out of fold, weighted F1 {metrics['oof_weighted_f1']:.3f}"
plot_confusion_matrix(oof["given_label"], oof["predicted"], labels, output.confusion_matrix, title)
write_fold_reports(oof, labels, output.fold_reports, output.fold_matrices)
oof.to_parquet(output.out_of_fold, index=False)
test.to_parquet(output.test, index=False)
fold_metrics.to_csv(output.fold_metrics, index=False)
with open(output.metrics, "w", encoding="utf-8") as metrics_file:
    json.dump(metrics, metrics_file, indent=2)
output.commit()
