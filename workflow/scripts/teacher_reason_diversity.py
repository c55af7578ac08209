"""Pairwise similarity of a reason variant's training reasons, per class; warns about classes above the threshold."""

import json

import pandas as pd

from vlmflow.prompting.diversity import reason_diversity, reasons_from_prompts
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
reasons = reasons_from_prompts(pd.read_parquet(snakemake.input.prompts))
report = {"source": snakemake.params.source, **reason_diversity(reasons, snakemake.params.threshold)}
with open(output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
output.commit()
