# OCR of every distinct image of both splits, in shards (one job per core given, common.smk OCR_SHARDS), cached
# by image sha256.
# Prompt variants never reach these rules' params, so toggling a variant reruns no OCR job.


rule ocr_shard:
    input:
        records=expand(INGEST_OUTPUTS["records"], split=SPLITS),
    output:
        text=OCR_OUTPUTS["shard"],
    log:
        "logs/ocr/shard{shard}.log",
    benchmark:
        "benchmarks/ocr/shard{shard}.tsv"
    priority: FOLD_WORK_PRIORITY
    conda:
        "../../envs/ocr.yaml"
    threads: OCR_THREADS
    params:
        engine=config["ocr"]["engine"],
        engine_options=ocr_engine_options(),
        cache_dir=config["ocr"]["cache_dir"],
        shards=OCR_SHARDS,
    script:
        "../scripts/ocr_shard.py"


rule merge_ocr:
    input:
        shards=expand(OCR_OUTPUTS["shard"], shard=range(OCR_SHARDS)),
    output:
        text=OCR_OUTPUTS["text"],
    log:
        "logs/ocr/merge.log",
    priority: FOLD_WORK_PRIORITY
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/merge_ocr.py"
