"""Fine-tune one (variant, fold) with llamafactory-cli, logging into a nested MLflow run."""

import pandas as pd

from vlmflow.model.train import train_fold
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.fine_tune import fine_tune_job

log_to(snakemake.log[0])
fold = int(snakemake.wildcards.fold)
fine_tune_job(
    snakemake,  # its parent run, DeepSpeed config, outputs, log, threads, GPUs and training params
    name=f"fold{fold}",
    train=lambda **common: train_fold(
        prompts=pd.read_parquet(snakemake.input.prompts), folds=pd.read_csv(snakemake.input.folds), fold=fold, **common
    ),
    fold=str(fold),
    level="fold",
)
