"""The training set of one final model: (corrected) labels plus pseudo-labels, balanced, with general data."""

import json

import pandas as pd

from vlmflow.final_training import build_final_training_set, final_training_records
from vlmflow.general_data import read_general_records
from vlmflow.labels import load_labels
from vlmflow.logfile import log_to
from vlmflow.ocr import text_by_record
from vlmflow.prompts import PromptVariant

log_to(snakemake.log[0])
test_records = pd.read_parquet(snakemake.input.test_records)
pseudo = pd.read_csv(snakemake.input.pseudo_labels) if snakemake.input.pseudo_labels else None
records = final_training_records(pd.read_parquet(snakemake.input.records), pseudo, test_records)
ocr = pd.read_parquet(snakemake.input.ocr) if snakemake.input.ocr else None
general = (
    read_general_records(snakemake.input.general[0], snakemake.params.general_format) if snakemake.input.general else []
)
prompts, general_sample, report = build_final_training_set(
    records,
    text_by_record(records, ocr),
    PromptVariant.from_config(snakemake.params.variant),
    load_labels(snakemake.input.labels),
    class_floor=snakemake.params.class_floor,
    general_records=general,
    general_ratio=snakemake.params.general_ratio,
    seed=snakemake.params.seed,
    warn_chars=snakemake.params.warn_chars,
    max_chars=snakemake.params.max_chars,
)
prompts.to_parquet(snakemake.output.prompts, index=False)
with open(snakemake.output.general, "w", encoding="utf-8") as general_file:
    json.dump(general_sample, general_file, ensure_ascii=False, indent=1)
with open(snakemake.output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
