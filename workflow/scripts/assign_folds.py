"""Assign every training record to one stratified, seeded fold, each duplicate group to one fold."""

import json

import pandas as pd

from vlmflow.data.duplicates import read_duplicate_table
from vlmflow.data.folds import assign_folds
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
records = pd.read_parquet(snakemake.input.records)
groups = read_duplicate_table(snakemake.input.groups).set_index("id")["group"]
folds, report = assign_folds(records, snakemake.params.folds, snakemake.params.seed, records["id"].map(groups))
folds.to_csv(output.folds, index=False)
with open(output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
output.commit()
