"""Label probabilities of the final model on every test record."""

import pandas as pd

from vlmflow.data.labels import label_names, load_labels
from vlmflow.model.scoring import load_scorer, score_table
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
prompts = pd.read_parquet(snakemake.input.prompts)
with lease_gpus(snakemake.resources.gpu):  # distinct GPUs per job; CUDA_VISIBLE_DEVICES set before CUDA starts
    scorer = load_scorer(
        snakemake.input.model,
        device=snakemake.params.device,
        num_threads=snakemake.threads,
        **snakemake.params.image_pixels,  # the training's resize limits
    )
    score_table(
        scorer,
        prompts[prompts["split"] == "test"],
        labels=label_names(load_labels(snakemake.input.labels)),
        variant=PromptVariant.from_config(snakemake.params.variant),
        reason_max_new_tokens=snakemake.params.max_new_tokens,
    ).to_parquet(output.test, index=False)
output.commit()
