"""A retrained model over its seeds' fits: mean and spread of their test weighted F1, and the mean difference
from the no-step model's fits of the same seeds with its paired bootstrap interval (truth file: the demo's)."""

import json

import pandas as pd

from vlmflow.evaluation.sanity import across_seeds
from vlmflow.recipe.final_models import final_fit_of
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
truth = pd.read_csv(snakemake.input.truth) if snakemake.input.truth else None
tests = {final_fit_of(path)[2]: pd.read_parquet(path) for path in snakemake.input.tests}
references = {final_fit_of(path)[2]: pd.read_parquet(path) for path in snakemake.input.references}
metrics = across_seeds(tests, references, truth)
with open(output.metrics, "w", encoding="utf-8") as metrics_file:
    json.dump(metrics, metrics_file, indent=2)
output.commit()
