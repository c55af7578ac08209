"""Pairwise similarity of a reason variant's training reasons, per class; warns about classes above the threshold."""

import json

import pandas as pd

from vlmflow.diversity import reason_diversity, reasons_from_prompts
from vlmflow.logfile import log_to

log_to(snakemake.log[0])
reasons = reasons_from_prompts(pd.read_parquet(snakemake.input.prompts))
report = {"source": snakemake.params.source, **reason_diversity(reasons, snakemake.params.threshold)}
with open(snakemake.output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
