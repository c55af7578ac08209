"""Fine-tune one final model (a variant's step combination, one seed, one round) in a child MLflow run."""

import json
from pathlib import Path

import pandas as pd

from vlmflow.model.train import train_model
from vlmflow.runtime.logfile import log_to
from vlmflow.tracking.fine_tune import fine_tune_job

log_to(snakemake.log[0])
steps, seed, round_ = snakemake.wildcards.steps, snakemake.wildcards.seed, snakemake.wildcards.round
fine_tune_job(
    snakemake,  # its parent run, DeepSpeed config, outputs, log, threads, GPUs and training params (the fit's seed)
    name=f"retrain/{steps}/seed{seed}/round{round_}",
    train=lambda **common: train_model(
        prompts=pd.read_parquet(snakemake.input.prompts),
        dataset=f"{steps}_round{round_}_train",  # in the fit's own seed<s>/round<n> folder
        extra_records=json.loads(Path(snakemake.input.general).read_text(encoding="utf-8")),
        **common,
    ),
    steps=steps,
    seed=seed,
    level="final",
)
