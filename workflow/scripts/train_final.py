"""Fine-tune one final model (a variant's step combination, one seed, one round) in a child MLflow run."""

import json
from pathlib import Path

import pandas as pd

from vlmflow.model.train import train_model
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.fine_tune import tracked_fine_tune

log_to(snakemake.log[0])
steps, seed, round_ = snakemake.wildcards.steps, snakemake.wildcards.seed, snakemake.wildcards.round
tracked_fine_tune(
    parent_run=snakemake.input.parent_run,
    run_file=snakemake.output.run,
    model_dir=snakemake.output.model,
    variant=snakemake.wildcards.variant,
    name=f"retrain/{steps}/seed{seed}/round{round_}",
    gpus=snakemake.resources.gpu,
    train=lambda mlflow_environment: train_model(
        prompts=pd.read_parquet(snakemake.input.prompts),
        dataset=f"{steps}_round{round_}_train",  # in the fit's own seed<s>/round<n> folder
        workdir=Path(snakemake.output.config).parent,
        deepspeed_config=snakemake.input.deepspeed or None,
        log_path=snakemake.log[0],
        threads=snakemake.threads,
        **snakemake.params.training,  # base model, template, method, hyper-parameters, ranks, the fit's seed
        extra_env=mlflow_environment,
        extra_records=json.loads(open(snakemake.input.general, encoding="utf-8").read()),
    ),
    steps=steps,
    seed=seed,
    level="final",
)
