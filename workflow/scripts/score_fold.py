"""Label probabilities of one fold model on its held-out records and on every test record."""

import pandas as pd

from vlmflow.data.folds import held_out_part
from vlmflow.data.labels import label_names, load_labels
from vlmflow.model.scoring import load_scorer, score_table
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
prompts, folds = pd.read_parquet(snakemake.input.prompts), pd.read_csv(snakemake.input.folds)
labels = label_names(load_labels(snakemake.input.labels))
variant = PromptVariant.from_config(snakemake.params.variant)
held_out = held_out_part(prompts, folds, int(snakemake.wildcards.fold))
score = dict(labels=labels, variant=variant, reason_max_new_tokens=snakemake.params.max_new_tokens)
with lease_gpus(snakemake.resources.gpu):  # distinct GPUs per job; CUDA_VISIBLE_DEVICES set before CUDA starts
    scorer = load_scorer(
        snakemake.input.model,
        device=snakemake.params.device,
        num_threads=snakemake.threads,
        **snakemake.params.image_pixels,  # the training's resize limits
    )
    score_table(scorer, held_out, **score).to_parquet(output.out_of_fold, index=False)
    score_table(scorer, prompts[prompts["split"] == "test"], **score).to_parquet(output.test, index=False)
output.commit()
