# vlmflow: the MIRE vision-language fine-tuning recipe as one DAG.
# Every stage is one include below; helpers and input functions live in workflow/rules/common.smk.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/machine.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/duplicates.smk"
include: "workflow/rules/ocr.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/folds.smk"
include: "workflow/rules/accounting.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/recipe.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/general.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),


onstart:
    tell_ocr_jobs()
    check_machine_at_start()


# An MLflow server that could not be reached is said last, where it is seen (vlmflow.tracking.offline).
onsuccess:
    tell_if_mlflow_was_offline()
    tell_warnings()


onerror:
    tell_if_mlflow_was_offline()
