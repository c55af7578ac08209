"""Count records in, out, rejected and flagged at each stage (ingest, OCR, prompts, folds); list every one not clean."""

import json
from pathlib import Path

import pandas as pd

from vlmflow.data.accounting import account_records, read_ingested, write_accounting
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
stages, issues = account_records(
    read_ingested(snakemake.input.records, snakemake.input.rejected, snakemake.input.counts),
    pd.read_parquet(snakemake.input.ocr) if snakemake.input.ocr else None,
    snakemake.wildcards.variant,
    pd.read_parquet(snakemake.input.prompts),
    pd.read_csv(snakemake.input.folds, dtype={"id": str}),
    json.loads(Path(snakemake.input.folds_report).read_text(encoding="utf-8")),
    snakemake.params.warn_chars,
)
output = staged(snakemake.output)
write_accounting(stages, issues, output.stages, output.issues)
output.commit()
