# Records in = records out + rejected at every stage a variant's records pass (ingest, OCR when its prompts
# read it, its prompts, folds), and one table of every record rejected or kept with a flag, with its stage
# and reason: no skip is silent.


rule account_records:
    input:
        records=expand("results/data/{split}.parquet", split=SPLITS),
        rejected=expand("results/data/{split}_rejected.csv", split=SPLITS),
        counts=expand("results/data/{split}_counts.json", split=SPLITS),
        ocr=ocr_table_if_needed,
        prompts="results/{variant}/prompts.parquet",
        folds="results/folds/folds.csv",
        folds_report="results/folds/report.json",
    output:
        stages="results/{variant}/accounting/stages.json",
        issues="results/{variant}/accounting/rejected_and_flagged.csv",
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
