"""Fine-tune one final model (a variant's stage combination, one round) in a child MLflow run."""

import json
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from vlmflow.model.train import train_model
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.runs import log_training, read_run, start_child_run, training_environment, write_run

log_to(snakemake.log[0])
variant, stages, round_ = snakemake.wildcards.variant, snakemake.wildcards.stages, snakemake.wildcards.round
parent = read_run(snakemake.input.parent_run)
client = MlflowClient(parent["tracking_uri"])
name = f"retrain/{stages}/round{round_}"
run_id = start_child_run(client, parent["experiment_id"], parent["run_id"], variant, name, stages=stages, level="final")
# Distinct GPUs for this job (Snakemake only counts them); CUDA_VISIBLE_DEVICES reaches the trainer.
with lease_gpus(snakemake.resources.gpu):
    config_path = train_model(
        prompts=pd.read_parquet(snakemake.input.prompts),
        dataset=f"{stages}_round{round_}_train",
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
        extra_records=json.loads(open(snakemake.input.general, encoding="utf-8").read()),
    )
log_training(client, run_id, config_path, snakemake.output.model)
write_run(snakemake.output.run, parent["tracking_uri"], parent["experiment"], parent["experiment_id"], run_id)
