"""Label probabilities of a model on the test records: all of them (a final model), or one shard of them
(a fold model's test shard, score.shards)."""

import pandas as pd

from vlmflow.data.labels import label_names, load_labels
from vlmflow.model.scoring import score_tables, shard_of_test_records
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
test = shard_of_test_records(pd.read_parquet(snakemake.input.prompts), snakemake.params.shard, snakemake.params.shards)
with lease_gpus(snakemake.resources.gpu):  # distinct GPUs per job; CUDA_VISIBLE_DEVICES set before CUDA starts
    [scores] = score_tables(
        snakemake.input.model,
        [test],
        label_names(load_labels(snakemake.input.labels)),
        PromptVariant.from_config(snakemake.params.variant),
        threads=snakemake.threads,
        **snakemake.params.scoring,  # device, reason budget, the training's image pixel limits
    )
scores.to_parquet(output.test, index=False)
output.commit()
