"""Pseudo-labels: test images whose fold models agree, confidently, on one label."""

import json

import pandas as pd

from vlmflow.logfile import log_to
from vlmflow.pseudo import select_pseudo_labels

log_to(snakemake.log[0])
selected, report = select_pseudo_labels(
    [pd.read_parquet(path) for path in snakemake.input.test],
    tau=snakemake.params.tau,
    min_agreeing_folds=snakemake.params.min_agreeing_folds,
    per_class_cap=snakemake.params.per_class_cap,
)
selected.to_csv(snakemake.output.pseudo_labels, index=False)
with open(snakemake.output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
