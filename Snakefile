# vlmflow: the MIRE vision-language fine-tuning recipe as one DAG.
# Every stage is one include below; helpers and input functions live in workflow/rules/common.smk.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"


rule all:
    input:
        all_targets(),
    default_target: True
