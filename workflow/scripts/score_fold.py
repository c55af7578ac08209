"""Label probabilities of one fold model on its held-out records and on the first shard of the test records."""

import pandas as pd

from vlmflow.data.folds import held_out_part
from vlmflow.data.labels import label_names, load_labels
from vlmflow.model.scoring import score_tables, shard_of_test_records
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
prompts, folds = pd.read_parquet(snakemake.input.prompts), pd.read_csv(snakemake.input.folds)
held_out = held_out_part(prompts, folds, int(snakemake.wildcards.fold))
test = shard_of_test_records(prompts, 0, snakemake.params.shards)  # the other shards: score_test_shard jobs
with lease_gpus(snakemake.resources.gpu):  # distinct GPUs per job; CUDA_VISIBLE_DEVICES set before CUDA starts
    scores = score_tables(
        snakemake.input.model,
        [held_out, test],
        label_names(load_labels(snakemake.input.labels)),
        PromptVariant.from_config(snakemake.params.variant),
        threads=snakemake.threads,
        **snakemake.params.scoring,  # device, reason budget, the training's image pixel limits
    )
    next(scores).to_parquet(output.out_of_fold, index=False)  # staged while the test records are scored
    next(scores).to_parquet(output.test_shard, index=False)
output.commit()
