"""Join the OCR shards into one table keyed by image sha256."""

import pandas as pd

from vlmflow.logfile import log_to

log_to(snakemake.log[0])
pd.concat([pd.read_parquet(path) for path in snakemake.input.shards]).to_parquet(snakemake.output.text, index=False)
