"""The table of variants: out-of-fold weighted F1 (the competition metric) and companions."""

import json

from vlmflow.logfile import log_to
from vlmflow.metrics import summarize_variants

log_to(snakemake.log[0])
metrics = {
    variant: json.loads(open(path, encoding="utf-8").read())
    for variant, path in zip(snakemake.params.variants, snakemake.input.metrics, strict=True)
}
table = summarize_variants(metrics)
table.to_csv(snakemake.output.table, index=False)
with open(snakemake.output.markdown, "w", encoding="utf-8") as markdown:
    markdown.write(table.to_markdown(index=False, floatfmt=".3f") + "\n")
