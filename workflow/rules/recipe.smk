# The second half of the recipe, per variant: label correction from the out-of-fold probabilities
# (with a review page and user overrides), pseudo-labels for confident test images, the fold models'
# averaged weights, test scores and metrics of every final model (retrained ones: retrain.smk, once per
# seed, and their mean and spread across seeds), and the submission from the one final.strategy names.


rule correct_labels:
    input:
        out_of_fold="results/{variant}/oof_probs.parquet",
        train_records="results/data/train.parquet",
        duplicate_conflicts="results/data/label_conflicts.csv",
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
    priority: FOLD_WORK_PRIORITY
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
    priority: FOLD_WORK_PRIORITY
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
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
        test=submission_probabilities,
        test_records="results/data/test.parquet",
        test_copies="results/data/test_copies_of_train.csv",
        labels=config["labels"],
    output:
        submission="results/{variant}/submission.csv",
    log:
        "logs/submission/{variant}.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        test_duplicates=config["data"]["test_duplicates"],
    script:
        "../scripts/write_submission.py"


rule average_fold_models:
    input:
        models=expand("results/{{variant}}/fold{fold}/model", fold=FOLDS),
    output:
        model=directory("results/{variant}/average_folds/model"),
    log:
        "logs/final/{variant}/average_folds.log",
    benchmark:
        "benchmarks/final/{variant}/average_folds.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=host_memory("averaging"),
    script:
        "../scripts/average_fold_models.py"


rule score_final_model:
    input:
        model="results/{variant}/{final_model}/model",
        prompts="results/{variant}/prompts.parquet",
        labels=config["labels"],
    output:
        test="results/{variant}/{final_model}/test_probs.parquet",
    log:
        "logs/final/{variant}/{final_model}_score.log",
    benchmark:
        "benchmarks/final/{variant}/{final_model}_score.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["score"]["threads"]
    resources:
        gpu=min(1, config["train"]["gpus_per_run"]),
        mem_mb=host_memory("scoring"),
        gpu_mem_mb=gpu_memory("scoring"),
    params:
        variant=variant_settings,
        scoring=scoring_settings(),
        shard=0,  # a final model scores every test record itself
        shards=1,
    script:
        "../scripts/score_test_records.py"


rule evaluate_final_model:
    input:
        test="results/{variant}/{final_model}/test_probs.parquet",
        truth=truth_file(),
        reference=no_step_model_test_probs,
    output:
        metrics="results/{variant}/{final_model}/test_metrics.json",
    log:
        "logs/final/{variant}/{final_model}_metrics.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/evaluate_final_model.py"


rule evaluate_across_seeds:
    input:
        tests=seed_test_probs,
        references=no_step_seed_test_probs,
        truth=truth_file(),
    output:
        metrics="results/{variant}/retrain/{steps}/test_metrics_across_seeds.json",
    log:
        "logs/final/{variant}/retrain/{steps}/across_seeds.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/evaluate_across_seeds.py"


rule evaluate_submission:
    input:
        submission="results/{variant}/submission.csv",
        truth=truth_file(),
    output:
        metrics="results/{variant}/submission_metrics.json",
    log:
        "logs/submission/{variant}_metrics.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        strategy=config["final"]["strategy"],
    script:
        "../scripts/evaluate_submission.py"
