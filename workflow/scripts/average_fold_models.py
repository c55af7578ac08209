"""One final model: the uniform average of the K fold models' weights."""

from pathlib import Path

from vlmflow.model.averaging import average_fold_models
from vlmflow.runtime.logfile import log_to

log_to(snakemake.log[0])
average_fold_models([Path(model) for model in snakemake.input.models], Path(snakemake.output.model))
