"""Test metrics of one final model against the truth file (the demo's); counts only without one."""

import json

import pandas as pd

from vlmflow.evaluation.metrics import test_set_metrics
from vlmflow.evaluation.sanity import difference_from_reference
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
truth = pd.read_csv(snakemake.input.truth) if snakemake.input.truth else None
test = pd.read_parquet(snakemake.input.test)
metrics = test_set_metrics(test, truth)
if truth is not None and snakemake.input.reference:  # the model retrained with no step, on the same images
    metrics |= difference_from_reference(test, pd.read_parquet(snakemake.input.reference), truth)
with open(output.metrics, "w", encoding="utf-8") as metrics_file:
    json.dump(metrics, metrics_file, indent=2)
output.commit()
