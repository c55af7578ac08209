"""Assign every training record to one stratified, seeded fold."""

import json

import pandas as pd

from vlmflow.folds import assign_folds
from vlmflow.logfile import log_to

log_to(snakemake.log[0])
folds, report = assign_folds(pd.read_parquet(snakemake.input.records), snakemake.params.folds, snakemake.params.seed)
folds.to_csv(snakemake.output.folds, index=False)
with open(snakemake.output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
