"""Log a variant's metrics and plots to its MLflow parent run, its folds' and its final fits' child runs."""

from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged
from vlmflow.tracking.variant_results import VariantResultFiles, log_variant_files

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
files = VariantResultFiles.named(snakemake.input)  # by the rule's input names
log_variant_files(files, snakemake.params.first_seed, output.logged)
output.commit()
