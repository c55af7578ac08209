"""Ask the teacher why each training image has its gold label (cached; failures listed, then fail or skip)."""

from vlmflow.data.ingest import read_split_tables
from vlmflow.data.labels import load_labels
from vlmflow.prompting.teacher import TeacherSettings, ask_teacher, reason_requests
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
records = read_split_tables([snakemake.input.records])
labels = load_labels(snakemake.input.labels)
requests = reason_requests(records, labels, snakemake.params.prompt, snakemake.params.max_chars)
# Transport settings come from config, not params: changing them must not rerun this rule and its dependents.
settings = TeacherSettings.from_config({**snakemake.config["teacher"], **snakemake.params.answers})
reasons, failures = ask_teacher(
    requests,
    settings,
    snakemake.config["teacher"]["cache_dir"],
    max_chars=snakemake.params.max_chars,
    on_error=snakemake.params.on_error,
)
reasons.drop(columns="image_path").to_parquet(output.reasons, index=False)
failures.to_csv(output.failures, index=False)
output.commit()
