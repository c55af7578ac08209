"""Flag training labels the out-of-fold models disagree with, apply them per the overrides, write a review page."""

import json
from pathlib import Path

import pandas as pd

from vlmflow.data.labels import label_names, load_labels
from vlmflow.data.ocr import text_by_record
from vlmflow.recipe.correction import (
    apply_corrections,
    correction_summary,
    find_label_issues,
    read_overrides,
    review_page,
)
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
labels = label_names(load_labels(snakemake.input.labels))
train, out_of_fold = pd.read_parquet(snakemake.input.train_records), pd.read_parquet(snakemake.input.out_of_fold)
issues = find_label_issues(out_of_fold, labels, snakemake.params.method, min_confidence=snakemake.params.min_confidence)
overrides = read_overrides(snakemake.params.overrides_path, labels)
corrected, decisions = apply_corrections(train, issues, overrides, snakemake.params.apply)
issues.to_csv(output.corrections, index=False)
decisions.to_csv(output.decisions, index=False)
corrected.to_parquet(output.corrected, index=False)
ocr_text = text_by_record(train, pd.read_parquet(snakemake.input.ocr) if snakemake.input.ocr else None)
review_page(issues, train, ocr_text, Path(output.review), snakemake.params.overrides_path)
truth = pd.read_csv(snakemake.input.truth) if snakemake.input.truth else None
summary = correction_summary(issues, decisions, truth)
Path(output.scores).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
output.commit()
