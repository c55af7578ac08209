"""Fine-tune one (variant, fold) with llamafactory-cli, logging into a nested MLflow run."""

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from vlmflow.model.train import train_fold
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.runs import log_training, read_run, start_fold_run, training_environment, write_run

log_to(snakemake.log[0])
fold, parent = int(snakemake.wildcards.fold), read_run(snakemake.input.parent_run)
client = MlflowClient(parent["tracking_uri"])
run_id = start_fold_run(client, parent["experiment_id"], parent["run_id"], snakemake.wildcards.variant, fold)
# Distinct GPUs for this job (Snakemake only counts them); CUDA_VISIBLE_DEVICES reaches the trainer.
with lease_gpus(snakemake.resources.gpu):
    config_path = train_fold(
        prompts=pd.read_parquet(snakemake.input.prompts),
        folds=pd.read_csv(snakemake.input.folds),
        fold=fold,
        workdir=Path(snakemake.output.config).parent,
        deepspeed_config=snakemake.input.deepspeed or None,
        log_path=snakemake.log[0],
        threads=snakemake.threads,
        model=snakemake.params.model,
        fine_tuning=snakemake.params.fine_tuning,
        hyperparameters=snakemake.params.hyperparameters,
        processes=snakemake.params.processes,
        seed=snakemake.params.seed,
        extra_env=training_environment(parent["tracking_uri"], parent["experiment"], run_id),
    )
log_training(client, run_id, config_path, snakemake.output.model)
write_run(snakemake.output.run, parent["tracking_uri"], parent["experiment"], parent["experiment_id"], run_id)
