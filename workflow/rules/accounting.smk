# Records in = records out + rejected at every stage a variant's records pass (ingest, OCR when its prompts
# read it, its prompts, folds), and one table of every record rejected or kept with a flag, with its stage
# and reason: no skip is silent.


rule account_records:
    input:
        records=expand(INGEST_OUTPUTS["records"], split=SPLITS),
        rejected=expand(INGEST_OUTPUTS["rejected"], split=SPLITS),
        counts=expand(INGEST_OUTPUTS["counts"], split=SPLITS),
        ocr=ocr_table_if_needed,
        prompts=PROMPTS_OUTPUTS["prompts"],
        folds=FOLDS_OUTPUTS["folds"],
        folds_report=FOLDS_OUTPUTS["report"],
    output:
        stages=ACCOUNTING_OUTPUTS["stages"],
        issues=ACCOUNTING_OUTPUTS["issues"],
    log:
        "logs/accounting/{variant}.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        warn_chars=config["prompt"]["warn_chars"],
    script:
        "../scripts/account_records.py"
