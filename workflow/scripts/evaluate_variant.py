"""Out-of-fold and test metrics of one variant, its per-class report and confusion matrix."""

import pandas as pd

from vlmflow.data.labels import label_names, load_labels
from vlmflow.evaluation.metrics import evaluate_variant, read_out_of_fold, write_variant_evaluation
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
evaluation = evaluate_variant(
    read_out_of_fold(snakemake.input.out_of_fold),
    [pd.read_parquet(path) for path in snakemake.input.test],
    pd.read_parquet(snakemake.input.train_records),
    pd.read_csv(snakemake.input.truth) if snakemake.input.truth else None,
)
labels = label_names(load_labels(snakemake.input.labels))
# report, confusion_matrix, fold_reports, fold_matrices, out_of_fold, test, fold_metrics, metrics
write_variant_evaluation(evaluation, labels, snakemake.wildcards.variant, output)
output.commit()
