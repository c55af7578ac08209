"""The training set of one final model: (corrected) labels plus pseudo-labels, balanced, with general data."""

import json

import pandas as pd

from vlmflow.data.labels import load_labels
from vlmflow.prompting.general_data import read_general_records
from vlmflow.prompting.prompts import read_prompt_inputs
from vlmflow.prompting.variants import PromptVariant
from vlmflow.recipe.final_training import build_final_training_set, final_training_records
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
test_records = pd.read_parquet(snakemake.input.test_records)
pseudo = pd.read_csv(snakemake.input.pseudo_labels) if snakemake.input.pseudo_labels else None
records = final_training_records(pd.read_parquet(snakemake.input.records), pseudo, test_records)
general = (
    read_general_records(snakemake.input.general[0], snakemake.params.general_format) if snakemake.input.general else []
)
prompts, general_sample, report = build_final_training_set(
    records,
    variant=PromptVariant.from_config(snakemake.params.variant),
    labels=load_labels(snakemake.input.labels),
    class_floor=snakemake.params.class_floor,
    general_records=general,
    general_ratio=snakemake.params.general_ratio,
    seed=snakemake.params.seed,
    warn_chars=snakemake.params.warn_chars,
    max_chars=snakemake.params.max_chars,
    **read_prompt_inputs(  # as build_prompts reads them, so the final model trains on the prompts it is scored with
        snakemake.input.ocr, snakemake.input.teacher_reasons, snakemake.input.teacher_descriptions
    ),
)
prompts.to_parquet(output.prompts, index=False)
with open(output.general, "w", encoding="utf-8") as general_file:
    json.dump(general_sample, general_file, ensure_ascii=False, indent=1)
with open(output.report, "w", encoding="utf-8") as report_file:
    json.dump(report, report_file, ensure_ascii=False, indent=2)
output.commit()
