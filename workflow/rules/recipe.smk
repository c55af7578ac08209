# The second half of the recipe, per variant: label correction from the out-of-fold probabilities
# (with a review page and user overrides), pseudo-labels for confident test images, the fold models'
# averaged weights, test scores and metrics of every final model (retrained ones: retrain.smk, once per
# seed, and their mean and spread across seeds), and the submission from the one final.strategy names.


rule correct_labels:
    input:
        out_of_fold=EVALUATE_OUTPUTS["out_of_fold"],
        train_records=RECORDS["train"],
        duplicate_conflicts=DUPLICATES_OUTPUTS["conflicts"],
        ocr=ocr_table_if_needed,
        overrides=override_file,
        truth=truth_file(),
        labels=config["labels"],
    output:
        corrections=RECIPE_OUTPUTS["corrections"],
        decisions=RECIPE_OUTPUTS["decisions"],
        corrected=RECIPE_OUTPUTS["corrected"],
        review=RECIPE_OUTPUTS["review"],
        scores=RECIPE_OUTPUTS["correction_scores"],
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
        test=each_fold(SCORE_OUTPUTS["test"]),
        labels=config["labels"],
    output:
        pseudo_labels=RECIPE_OUTPUTS["pseudo_labels"],
        report=RECIPE_OUTPUTS["pseudo_report"],
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
        test_records=RECORDS["test"],
        test_copies=DUPLICATES_OUTPUTS["test_copies"],
        labels=config["labels"],
    output:
        submission=RECIPE_OUTPUTS["submission"],
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
        models=each_fold(TRAIN_OUTPUTS["model"]),
    output:
        model=directory(RECIPE_OUTPUTS["averaged_model"]),
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
        model=RECIPE_OUTPUTS["final_model"],
        prompts=PROMPTS_OUTPUTS["prompts"],
        labels=config["labels"],
    output:
        test=RECIPE_OUTPUTS["final_test"],
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
        test=RECIPE_OUTPUTS["final_test"],
        truth=truth_file(),
        reference=no_step_model_test_probs,
    output:
        metrics=RECIPE_OUTPUTS["final_metrics"],
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
        metrics=RECIPE_OUTPUTS["across_seeds"],
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
        submission=RECIPE_OUTPUTS["submission"],
        truth=truth_file(),
    output:
        metrics=RECIPE_OUTPUTS["submission_metrics"],
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
