"""Join the OCR shards into one table keyed by image sha256."""

import pandas as pd

from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
pd.concat([pd.read_parquet(path) for path in snakemake.input.shards]).to_parquet(output.text, index=False)
output.commit()
