"""The ablation summary table as an HTML page for the report."""

from pathlib import Path

import pandas as pd

from vlmflow.logfile import log_to
from vlmflow.outputs import staged
from vlmflow.report import table_page
from vlmflow.summary import with_titles

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
table = with_titles(pd.read_csv(snakemake.input.table))
Path(output.page).write_text(table_page(table, "Ablation summary"), encoding="utf-8")
output.commit()
