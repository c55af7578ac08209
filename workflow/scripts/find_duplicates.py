"""Exact and near-duplicate images of both splits: groups for the folds, label conflicts, test copies."""

import json

import pandas as pd

from vlmflow.data.duplicates import find_duplicates
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
duplicates = find_duplicates(
    pd.read_parquet(snakemake.input.train),
    pd.read_parquet(snakemake.input.test),
    snakemake.params.near_duplicate_distance,
)
duplicates.exact.to_csv(output.exact, index=False)
duplicates.near.to_csv(output.near, index=False)
duplicates.groups.to_csv(output.groups, index=False)
duplicates.conflicts.to_csv(output.conflicts, index=False)
duplicates.test_copies.to_csv(output.test_copies, index=False)
with open(output.summary, "w", encoding="utf-8") as summary_file:
    json.dump(duplicates.summary(), summary_file, indent=2)
output.commit()
