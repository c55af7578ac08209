"""The ablation summary table as an HTML page for the report."""

from pathlib import Path

import pandas as pd

from vlmflow.evaluation.report import table_page
from vlmflow.evaluation.summary import with_titles
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
table = with_titles(pd.read_csv(snakemake.input.table))
Path(output.page).write_text(table_page(table, "Ablation summary"), encoding="utf-8")
output.commit()
