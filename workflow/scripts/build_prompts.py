"""Build one variant's prompts (parquet) and its LLaMA-Factory training dataset."""

from pathlib import Path

from vlmflow.data.ingest import read_split_tables
from vlmflow.data.labels import load_labels
from vlmflow.prompting.prompts import build_prompt_table, read_prompt_inputs, write_llamafactory_dataset
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
# The table is staged; the LLaMA-Factory dataset's file names are fixed by its format, so it is written as named.
output = staged(snakemake.output, "prompts")
records = read_split_tables(snakemake.input.records)
prompts = build_prompt_table(
    records,
    variant=PromptVariant.from_config(snakemake.params.variant),
    labels=load_labels(snakemake.input.labels),
    warn_chars=snakemake.params.warn_chars,
    max_chars=snakemake.params.max_chars,
    **read_prompt_inputs(  # OCR text and teacher text, by image
        snakemake.input.ocr, snakemake.input.teacher_reasons, snakemake.input.teacher_descriptions
    ),
)
prompts.to_parquet(output.prompts, index=False)
write_llamafactory_dataset(prompts, Path(snakemake.output.dataset).parent, Path(snakemake.output.dataset).stem)
output.commit()
