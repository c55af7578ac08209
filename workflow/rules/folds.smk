# One stratified K-fold split of the training records, shared by every variant (paired comparisons).


rule assign_folds:
    input:
        records="results/data/train.parquet",
    output:
        folds="results/folds/folds.csv",
        report="results/folds/report.json",
    log:
        "logs/folds/assign_folds.log",
    conda:
        "../../envs/core.yaml"
    params:
        folds=config["train"]["folds"],
        seed=config["train"]["seed"],
    script:
        "../scripts/assign_folds.py"
