"""The training set of one final model: (corrected) labels plus pseudo-labels, balanced, with general data."""

from vlmflow.recipe.final_training import final_training_set_from_files, write_final_training_set
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
prompts, general, report = final_training_set_from_files(
    records=snakemake.input.records,
    test_records=snakemake.input.test_records,
    pseudo_labels=snakemake.input.pseudo_labels,
    ocr=snakemake.input.ocr,
    teacher_reasons=snakemake.input.teacher_reasons,
    teacher_descriptions=snakemake.input.teacher_descriptions,
    general=snakemake.input.general,
    labels=snakemake.input.labels,
    variant=snakemake.params.variant,
    class_floor=snakemake.params.class_floor,
    general_format=snakemake.params.general_format,
    general_ratio=snakemake.params.general_ratio,
    seed=snakemake.params.seed,
    warn_chars=snakemake.params.warn_chars,
    max_chars=snakemake.params.max_chars,
)
write_final_training_set(prompts, general, report, output.prompts, output.general, output.report)
output.commit()
