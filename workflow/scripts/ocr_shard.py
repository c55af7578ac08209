"""OCR one shard of the distinct images of both splits, through the sha256 cache."""

from vlmflow.data.ingest import read_split_tables
from vlmflow.data.ocr import OcrCache, make_ocr_engine, ocr_images, select_shard
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
records = read_split_tables(snakemake.input.records)
shard = select_shard(records, int(snakemake.wildcards.shard), snakemake.params.shards)
engine = make_ocr_engine(snakemake.params.engine, threads=snakemake.threads, **snakemake.params.engine_options)
cache = OcrCache(snakemake.params.cache_dir, snakemake.params.engine, snakemake.params.engine_options)
ocr_images(shard, engine, cache).to_parquet(output.text, index=False)
output.commit()
