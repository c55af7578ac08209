"""The ablation summary across variants and final models: table (CSV, Markdown), bar chart, MLflow run."""

from vlmflow.evaluation.results import by_variant, by_variant_and_model, read_optional_json
from vlmflow.evaluation.summary import summarize_ablation
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged
from vlmflow.tracking.runs import record_summary_run

log_to(snakemake.log[0])
# Renamed into place before MLflow logs them (it keeps file names); the run reference is written last.
output = staged(snakemake.output, "table", "markdown", "chart", "warnings")
variants = snakemake.params.variants
summary = summarize_ablation(
    variants,
    metrics=by_variant(snakemake.input.metrics),
    accounting=by_variant(snakemake.input.stages),
    corrections=by_variant(snakemake.input.correction_scores),
    final_models=by_variant_and_model(snakemake.input.final_metrics, variants),
    submitted=snakemake.params.submitted,
    general=by_variant_and_model(snakemake.input.general, variants),  # when final.general_data.held_out is set
    first_fits=by_variant_and_model(snakemake.input.training_sets, variants, seed=snakemake.params.first_seed),
    base_general=read_optional_json(snakemake.input.base_general),
    min_ocr_text_share=snakemake.params.min_ocr_text_share,
)
summary.write(output.table, output.markdown, output.warnings, output.chart)
output.commit()
artifacts = [snakemake.output.table, snakemake.output.markdown, snakemake.output.chart]
record_summary_run(snakemake.input.experiment, snakemake.output.run, summary.metrics(), artifacts)
