# One stratified group K-fold split of the training records, shared by every variant (paired comparisons);
# the records of a duplicate group (results/data/duplicate_groups.csv) share a fold.


rule assign_folds:
    input:
        records=RECORDS["train"],
        groups=DUPLICATES_OUTPUTS["groups"],
    output:
        folds=FOLDS_OUTPUTS["folds"],
        report=FOLDS_OUTPUTS["report"],
    log:
        "logs/folds/assign_folds.log",
    conda:
        "../../envs/core.yaml"
    params:
        folds=config["train"]["folds"],
        seed=config["train"]["seed"],
    script:
        "../scripts/assign_folds.py"
