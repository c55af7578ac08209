"""Flag training labels the out-of-fold models disagree with, apply them per the overrides, write a review page."""

import pandas as pd

from vlmflow.data.duplicates import read_duplicate_table
from vlmflow.data.labels import label_names, load_labels
from vlmflow.data.ocr import text_by_record
from vlmflow.recipe.correction import correct_labels
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
train = pd.read_parquet(snakemake.input.train_records)
correction = correct_labels(
    train,
    pd.read_parquet(snakemake.input.out_of_fold),
    label_names(load_labels(snakemake.input.labels)),
    method=snakemake.params.method,
    min_confidence=snakemake.params.min_confidence,
    overrides_path=snakemake.params.overrides_path,
    apply=snakemake.params.apply,
    ocr_text=text_by_record(train, pd.read_parquet(snakemake.input.ocr) if snakemake.input.ocr else None),
    review_html=output.review,
    truth=pd.read_csv(snakemake.input.truth) if snakemake.input.truth else None,
    duplicate_conflicts=read_duplicate_table(snakemake.input.duplicate_conflicts),
)
correction.write(output.corrections, output.decisions, output.corrected, output.scores)
output.commit()
