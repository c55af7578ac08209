"""Pseudo-labels: test images whose fold models agree, confidently, on one label."""

import json

import pandas as pd

from vlmflow.recipe.pseudo import select_pseudo_labels
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
selected, report = select_pseudo_labels(
    [pd.read_parquet(path) for path in snakemake.input.test],
    tau=snakemake.params.tau,
    min_agreeing_folds=snakemake.params.min_agreeing_folds,
    per_class_cap=snakemake.params.per_class_cap,
)
selected.to_csv(output.pseudo_labels, index=False)
with open(output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
output.commit()
