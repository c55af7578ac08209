"""One fold model's test scores: its test shards joined in the prompt table's order."""

import pandas as pd

from vlmflow.model.scoring import merge_test_shards
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
tables = [pd.read_parquet(path) for path in snakemake.input.shards]
merge_test_shards(tables, pd.read_parquet(snakemake.input.prompts)).to_parquet(output.test, index=False)
output.commit()
