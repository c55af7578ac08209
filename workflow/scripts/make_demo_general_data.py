"""Write the demo's small general instruction set (alpaca format), mixed into final fits."""

import json

from vlmflow.prompting.general_data import demo_general_records
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
records = demo_general_records(snakemake.params.n, snakemake.params.seed)
with open(output.general, "w", encoding="utf-8") as general:
    json.dump(records, general, ensure_ascii=False, indent=1)
output.commit()
