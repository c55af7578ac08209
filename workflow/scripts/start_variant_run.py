"""Open the variant's parent MLflow run and record its id."""

from mlflow.tracking import MlflowClient

from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.runs import read_run, start_variant_run, write_run

log_to(snakemake.log[0])
store = read_run(snakemake.input.experiment)
client = MlflowClient(store["tracking_uri"])
run_id = start_variant_run(client, store["experiment_id"], snakemake.wildcards.variant, snakemake.params.variant)
write_run(snakemake.output.run, store["tracking_uri"], store["experiment"], store["experiment_id"], run_id)
