"""Validate one split's records into results/data/{split}.parquet (+ rejected table and counts)."""

from vlmflow.data.ingest import ingest_records, write_ingest_outputs
from vlmflow.data.labels import label_names, load_labels
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
result = ingest_records(
    snakemake.input.data,
    label_set=label_names(load_labels(snakemake.input.labels)),
    labelled=snakemake.wildcards.split == "train",
    image_dir=snakemake.params.image_dir,
    root=snakemake.params.root,
    max_image_pixels=snakemake.params.max_image_pixels,
    on_error=snakemake.params.on_error,
    upright_image_dir=snakemake.params.upright_image_dir,
)
write_ingest_outputs(result, output.records, output.rejected, output.counts)
output.commit()
