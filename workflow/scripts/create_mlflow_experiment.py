"""Create the MLflow store and experiment once, before parallel jobs write to it.

An unreachable tracking server does not stop the run: it logs to a local store instead (vlmflow.tracking.offline).
"""

from mlflow.tracking import MlflowClient

from vlmflow.runtime.layout import MLFLOW_ARTIFACTS
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.offline import choose_store
from vlmflow.tracking.runs import ensure_experiment, write_run

log_to(snakemake.log[0])
tracking_uri, fallback = choose_store(snakemake.params.tracking_uri)
experiment_id = ensure_experiment(MlflowClient(tracking_uri), snakemake.params.experiment, MLFLOW_ARTIFACTS)
write_run(snakemake.output.experiment, tracking_uri, snakemake.params.experiment, experiment_id, None, **fallback)
