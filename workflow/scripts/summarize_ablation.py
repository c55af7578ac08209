"""The ablation summary across variants and final models: table (CSV, Markdown), bar chart, MLflow run."""

import json

from vlmflow.evaluation.summary import ablation_row, ablation_table, plot_ablation, summary_metrics, to_markdown
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged
from vlmflow.tracking.runs import log_summary_run, read_run, write_run


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


log_to(snakemake.log[0])
# Renamed into place before MLflow logs them (it keeps file names); the run reference is written last.
output = staged(snakemake.output, "table", "markdown", "chart")
variants, names = snakemake.params.variants, snakemake.params.final_models
final_metrics = iter(snakemake.input.final_metrics)  # variant-major, names in order
rows = [
    ablation_row(
        variant,
        read_json(metrics),
        read_json(correction),
        {name: read_json(next(final_metrics)) for name in names},
        snakemake.params.submitted,
    )
    for variant, metrics, correction in zip(
        variants, snakemake.input.metrics, snakemake.input.correction_scores, strict=True
    )
]
table = ablation_table(rows)
table.to_csv(output.table, index=False)
with open(output.markdown, "w", encoding="utf-8") as markdown:
    markdown.write(to_markdown(table))
plot_ablation(table, output.chart)
output.commit()
experiment = read_run(snakemake.input.experiment)
run_id = log_summary_run(
    experiment, summary_metrics(table), [snakemake.output.table, snakemake.output.markdown, snakemake.output.chart]
)
write_run(
    snakemake.output.run, experiment["tracking_uri"], experiment["experiment"], experiment["experiment_id"], run_id
)
