"""How many pseudo-labels each class got, and at which confidence."""

import json

import pandas as pd

from vlmflow.evaluation.report import confidence_ranges, plot_pseudo_labels, pseudo_label_counts
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
with open(snakemake.input.report, encoding="utf-8") as report:
    selection = json.load(report)
counts = pseudo_label_counts(
    pd.read_csv(snakemake.input.pseudo_labels), list(selection["kept_per_class"]), confidence_ranges(selection["tau"])
)
counts.to_csv(output.counts, index_label="label")
plot_pseudo_labels(counts, selection, output.plot, f"{snakemake.wildcards.variant}: pseudo-labels")
output.commit()
