"""Open the variant's parent MLflow run (creating the experiment once) and record its id."""

from mlflow.tracking import MlflowClient

from vlmflow.logfile import log_to
from vlmflow.tracking import absolute_tracking_uri, ensure_experiment, start_variant_run, write_run

log_to(snakemake.log[0])
tracking_uri = absolute_tracking_uri(snakemake.params.tracking_uri)
client = MlflowClient(tracking_uri)
experiment_id = ensure_experiment(client, snakemake.params.experiment, artifact_root="results/mlflow-artifacts")
run_id = start_variant_run(client, experiment_id, snakemake.wildcards.variant, snakemake.params.variant)
write_run(snakemake.output.run, tracking_uri, snakemake.params.experiment, experiment_id, run_id)
