"""The ablation summary across variants and final models: table (CSV, Markdown), bar chart, MLflow run."""

import json

from vlmflow.evaluation.sanity import run_warnings
from vlmflow.evaluation.summary import (
    ablation_row,
    ablation_table,
    difference_metrics,
    difference_whiskers,
    general_ability_note,
    idle_steps_note,
    plot_ablation,
    seed_points,
    summary_metrics,
    to_markdown,
    warnings_markdown,
    with_general_ability,
)
from vlmflow.recipe.final_models import final_fit_of, final_model_of, variant_of
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged
from vlmflow.tracking.runs import log_summary_run, read_run, write_run


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


log_to(snakemake.log[0])
# Renamed into place before MLflow logs them (it keeps file names); the run reference is written last.
output = staged(snakemake.output, "table", "markdown", "chart", "warnings")
metrics = {variant_of(path): read_json(path) for path in snakemake.input.metrics}
stages = {variant_of(path): read_json(path)["stages"] for path in snakemake.input.stages}
warnings = run_warnings(metrics, stages, snakemake.params.min_ocr_text_share)
corrections = {variant_of(path): read_json(path) for path in snakemake.input.correction_scores}
# variant -> final model -> metrics (a retrained model's across its seeds)
final_models = {variant: {} for variant in snakemake.params.variants}
for path in snakemake.input.final_metrics:
    variant, name = final_model_of(path)
    final_models[variant][name] = read_json(path)
rows = [
    ablation_row(
        variant, metrics[variant], corrections[variant], final_models[variant], snakemake.params.submitted[variant]
    )
    for variant in snakemake.params.variants
]
general = {variant: {} for variant in snakemake.params.variants}  # variant -> final model -> general metrics
for path in snakemake.input.general:  # when final.general_data.held_out is set
    variant, name = final_model_of(path)
    general[variant][name] = read_json(path)
# variant -> retrained model -> training set of its first seed's fit (whose general ability was measured)
first_fits = {variant: {} for variant in snakemake.params.variants}
for path in snakemake.input.training_sets:
    variant, name, seed = final_fit_of(path)
    if seed == snakemake.params.first_seed:
        first_fits[variant][name] = read_json(path)
mixed = {variant: {name: fit["general_records"] for name, fit in fits.items()} for variant, fits in first_fits.items()}
rows = [with_general_ability(row, general[row["variant"]]) for row in rows]
table = ablation_table(rows)
table.to_csv(output.table, index=False)
with open(output.markdown, "w", encoding="utf-8") as markdown:
    base = read_json(snakemake.input.base_general[0]) if snakemake.input.base_general else None
    markdown.write(
        warnings_markdown(warnings)
        + to_markdown(table)
        + idle_steps_note(corrections, first_fits)
        + general_ability_note(general, mixed, base)
    )
with open(output.warnings, "w", encoding="utf-8") as listed:  # Snakefile's onsuccess prints them last
    listed.writelines(f"WARNING: {warning}\n" for warning in warnings)
plot_ablation(table, output.chart, difference_whiskers(final_models), seed_points(final_models))
output.commit()
experiment = read_run(snakemake.input.experiment)
run_id = log_summary_run(
    experiment,
    summary_metrics(table) | difference_metrics(final_models),
    [snakemake.output.table, snakemake.output.markdown, snakemake.output.chart],
)
write_run(
    snakemake.output.run, experiment["tracking_uri"], experiment["experiment"], experiment["experiment_id"], run_id
)
