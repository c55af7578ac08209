"""Fine-tune one (variant, fold) with llamafactory-cli, logging into a nested MLflow run."""

from pathlib import Path

import pandas as pd

from vlmflow.model.train import train_fold
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.fine_tune import tracked_fine_tune

log_to(snakemake.log[0])
fold = int(snakemake.wildcards.fold)
tracked_fine_tune(
    parent_run=snakemake.input.parent_run,
    run_file=snakemake.output.run,
    model_dir=snakemake.output.model,
    variant=snakemake.wildcards.variant,
    name=f"fold{fold}",
    gpus=snakemake.resources.gpu,
    train=lambda mlflow_environment: train_fold(
        prompts=pd.read_parquet(snakemake.input.prompts),
        folds=pd.read_csv(snakemake.input.folds),
        fold=fold,
        workdir=Path(snakemake.output.config).parent,
        deepspeed_config=snakemake.input.deepspeed or None,
        log_path=snakemake.log[0],
        threads=snakemake.threads,
        **snakemake.params.training,  # base model, template, method, hyper-parameters, ranks, seed
        extra_env=mlflow_environment,
    ),
    fold=str(fold),
    level="fold",
)
