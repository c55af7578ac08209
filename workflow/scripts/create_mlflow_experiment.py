"""Create the MLflow store and experiment once, before parallel jobs write to it."""

from mlflow.tracking import MlflowClient

from vlmflow.logfile import log_to
from vlmflow.tracking import absolute_tracking_uri, ensure_experiment, write_run

log_to(snakemake.log[0])
tracking_uri = absolute_tracking_uri(snakemake.params.tracking_uri)
experiment_id = ensure_experiment(MlflowClient(tracking_uri), snakemake.params.experiment, "results/mlflow-artifacts")
write_run(snakemake.output.experiment, tracking_uri, snakemake.params.experiment, experiment_id, run_id=None)
