"""Build one variant's prompts (parquet) and its LLaMA-Factory training dataset."""

from pathlib import Path

import pandas as pd

from vlmflow.data.ingest import read_split_tables
from vlmflow.data.labels import load_labels
from vlmflow.prompting.prompts import PromptVariant, build_prompt_table, write_llamafactory_dataset
from vlmflow.prompting.teacher import descriptions_by_image, reasons_by_image_and_label
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
# The table is staged; the LLaMA-Factory dataset's file names are fixed by its format, so it is written as named.
output = staged(snakemake.output, "prompts")
records = read_split_tables(snakemake.input.records)
ocr = pd.read_parquet(snakemake.input.ocr) if snakemake.input.ocr else pd.DataFrame(columns=["image_sha256", "text"])
reasons, descriptions = snakemake.input.teacher_reasons, snakemake.input.teacher_descriptions
prompts = build_prompt_table(
    records,
    dict(zip(ocr["image_sha256"], ocr["text"], strict=True)),
    PromptVariant.from_config(snakemake.params.variant),
    load_labels(snakemake.input.labels),
    warn_chars=snakemake.params.warn_chars,
    max_chars=snakemake.params.max_chars,
    teacher_reasons=reasons_by_image_and_label(pd.read_parquet(reasons)) if reasons else None,
    teacher_descriptions=descriptions_by_image(pd.read_parquet(descriptions)) if descriptions else None,
)
prompts.to_parquet(output.prompts, index=False)
write_llamafactory_dataset(prompts, Path(snakemake.output.dataset).parent, Path(snakemake.output.dataset).stem)
output.commit()
