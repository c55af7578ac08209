# The second half of the recipe, per variant: label correction from the out-of-fold probabilities
# (with a review page and user overrides), pseudo-labels for confident test images, and the
# submission file from the fold models' averaged test probabilities.


rule correct_labels:
    input:
        out_of_fold="results/{variant}/oof_probs.parquet",
        train_records="results/data/train.parquet",
        ocr=ocr_table_if_needed,
        overrides=override_file,
        truth=truth_file(),
        labels=config["labels"],
    output:
        corrections="results/{variant}/label_corrections.csv",
        decisions="results/{variant}/label_decisions.csv",
        corrected="results/{variant}/train_corrected.parquet",
        review="results/{variant}/label_review.html",
        scores="results/{variant}/correction_scores.json",
    log:
        "logs/correction/{variant}.log",
    conda:
        "../../envs/core.yaml"
    params:
        method=config["correction"]["method"],
        min_confidence=config["correction"]["min_confidence"],
        apply=config["correction"]["apply"],
        overrides_path=override_path,
    script:
        "../scripts/correct_labels.py"


rule select_pseudo_labels:
    input:
        test=expand("results/{{variant}}/fold{fold}/test_probs.parquet", fold=FOLDS),
        labels=config["labels"],
    output:
        pseudo_labels="results/{variant}/pseudo_labels.csv",
        report="results/{variant}/pseudo_labels.json",
    log:
        "logs/pseudo/{variant}.log",
    conda:
        "../../envs/core.yaml"
    params:
        tau=config["pseudo"]["tau"],
        min_agreeing_folds=min(config["pseudo"]["min_agreeing_folds"], len(FOLDS)),
        per_class_cap=config["pseudo"]["per_class_cap"],
    script:
        "../scripts/select_pseudo_labels.py"


rule write_submission:
    input:
        test="results/{variant}/test_probs.parquet",
        test_records="results/data/test.parquet",
        labels=config["labels"],
    output:
        submission="results/{variant}/submission.csv",
    log:
        "logs/submission/{variant}.log",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/write_submission.py"
