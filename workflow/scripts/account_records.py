"""Count records in, out, rejected and flagged at each stage (ingest, OCR, prompts, folds); list every one not clean."""

import json
from pathlib import Path

import pandas as pd

from vlmflow.data.accounting import IngestedSplit, account_records
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
ingested = {  # results/data/<split>.parquet
    Path(records).stem: IngestedSplit.read(records, rejected, counts)
    for records, rejected, counts in zip(
        snakemake.input.records, snakemake.input.rejected, snakemake.input.counts, strict=True
    )
}
stages, issues = account_records(
    ingested,
    pd.read_parquet(snakemake.input.ocr) if snakemake.input.ocr else None,
    snakemake.wildcards.variant,
    pd.read_parquet(snakemake.input.prompts),
    pd.read_csv(snakemake.input.folds, dtype={"id": str}),
    json.loads(Path(snakemake.input.folds_report).read_text(encoding="utf-8")),
    snakemake.params.warn_chars,
)
output = staged(snakemake.output)
Path(output.stages).write_text(json.dumps({"stages": stages}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
issues.to_csv(output.issues, index=False)
output.commit()
