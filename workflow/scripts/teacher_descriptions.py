"""Ask the teacher to describe every image of both splits (cached; failures listed, then fail or skip)."""

from vlmflow.data.ingest import read_split_tables
from vlmflow.prompting.teacher import TeacherSettings, ask_teacher, description_requests
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
records = read_split_tables(snakemake.input.records)
requests = description_requests(records, snakemake.params.prompt, snakemake.params.max_chars)
# Transport settings come from config, not params: changing them must not rerun this rule and its dependents.
settings = TeacherSettings.from_config({**snakemake.config["teacher"], **snakemake.params.answers})
descriptions, failures = ask_teacher(
    requests,
    settings,
    snakemake.config["teacher"]["cache_dir"],
    max_chars=snakemake.params.max_chars,
    on_error=snakemake.params.on_error,
)
descriptions.drop(columns=["image_path", "label"]).to_parquet(output.descriptions, index=False)
failures.drop(columns="label").to_csv(output.failures, index=False)
output.commit()
