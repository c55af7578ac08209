# Metrics per variant (out-of-fold weighted F1, the competition metric; test metrics when a truth
# file exists), logged to the variant's MLflow runs, and one summary table across variants.


rule evaluate_variant:
    input:
        out_of_fold=each_fold(SCORE_OUTPUTS["out_of_fold"]),
        test=each_fold(SCORE_OUTPUTS["test"]),
        train_records=RECORDS["train"],
        truth=truth_file(),
        labels=config["labels"],
    output:
        metrics=EVALUATE_OUTPUTS["metrics"],
        fold_metrics=EVALUATE_OUTPUTS["fold_metrics"],
        out_of_fold=EVALUATE_OUTPUTS["out_of_fold"],
        test=EVALUATE_OUTPUTS["test"],
        report=EVALUATE_OUTPUTS["report"],
        confusion_matrix=report(
            EVALUATE_OUTPUTS["confusion_matrix"],
            caption="../report/confusion_matrix.rst",
            category="Training",
            subcategory="{variant}",
            labels={"variant": "{variant}", "result": "confusion matrix, out of fold"},
        ),
        fold_reports=each_fold(EVALUATE_OUTPUTS["fold_report"]),
        fold_matrices=[
            report(
                fill(EVALUATE_OUTPUTS["fold_matrix"], fold=fold),
                caption="../report/fold_confusion_matrix.rst",
                category="Training",
                subcategory="{variant}",
                labels={
                    "variant": "{variant}",
                    "result": f"confusion matrix, fold {fold}",
                },
            )
            for fold in FOLDS
        ],
    log:
        "logs/evaluate/{variant}.log",
    priority: FOLD_WORK_PRIORITY
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/evaluate_variant.py"


rule log_variant_to_mlflow:
    input:
        parent_run=TRAIN_OUTPUTS["variant_run"],
        fold_runs=each_fold(TRAIN_OUTPUTS["run"]),
        metrics=EVALUATE_OUTPUTS["metrics"],
        fold_metrics=EVALUATE_OUTPUTS["fold_metrics"],
        report=EVALUATE_OUTPUTS["report"],
        confusion_matrix=EVALUATE_OUTPUTS["confusion_matrix"],
        fold_reports=each_fold(EVALUATE_OUTPUTS["fold_report"]),
        fold_matrices=each_fold(EVALUATE_OUTPUTS["fold_matrix"]),
        correction_scores=RECIPE_OUTPUTS["correction_scores"],
        corrections=RECIPE_OUTPUTS["corrections"],
        review=RECIPE_OUTPUTS["review"],
        pseudo_report=RECIPE_OUTPUTS["pseudo_report"],
        pseudo_labels=RECIPE_OUTPUTS["pseudo_labels"],
        decisions=RECIPE_OUTPUTS["decisions"],
        reason_diversity=reason_diversity_if_needed,
        submission=RECIPE_OUTPUTS["submission"],
        submission_metrics=RECIPE_OUTPUTS["submission_metrics"],
        final_metrics=lambda wildcards: final_model_metrics(wildcards.variant),
        fit_metrics=lambda wildcards: retrained_files(
            wildcards.variant, RECIPE_OUTPUTS["final_metrics"]
        ),
        retrained_runs=lambda wildcards: retrained_files(
            wildcards.variant, RETRAIN_OUTPUTS["run"]
        ),
        training_sets=lambda wildcards: retrained_files(
            wildcards.variant, RETRAIN_OUTPUTS["training_set"]
        ),
        general_metrics=lambda wildcards: general_ability_metrics(wildcards.variant),
    output:
        logged=EVALUATE_OUTPUTS["logged"],
    log:
        "logs/mlflow/{variant}_metrics.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        first_seed=FIRST_SEED,
    script:
        "../scripts/log_variant_to_mlflow.py"


rule summarize_ablation:
    input:
        metrics=expand(EVALUATE_OUTPUTS["metrics"], variant=VARIANTS),
        correction_scores=expand(RECIPE_OUTPUTS["correction_scores"], variant=VARIANTS),
        final_metrics=[
            path for variant in VARIANTS for path in final_model_metrics(variant)
        ],
        logged=expand(EVALUATE_OUTPUTS["logged"], variant=VARIANTS),
        general=[
            path for variant in VARIANTS for path in general_ability_metrics(variant)
        ],
        base_general=base_general_ability_metrics(),
        training_sets=[
            path
            for variant in VARIANTS
            for path in retrained_files(variant, RETRAIN_OUTPUTS["training_set"])
        ],
        experiment=TRAIN_OUTPUTS["experiment"],
        stages=expand(ACCOUNTING_OUTPUTS["stages"], variant=VARIANTS),
    output:
        table=EVALUATE_OUTPUTS["summary_table"],
        markdown=EVALUATE_OUTPUTS["summary_markdown"],
        warnings=EVALUATE_OUTPUTS["warnings"],
        chart=report(
            EVALUATE_OUTPUTS["summary_chart"],
            caption="../report/summary_chart.rst",
            category="Ablation summary",
            labels={"result": "bar chart: weighted F1 per variant and final model"},
        ),
        run=EVALUATE_OUTPUTS["summary_run"],
    log:
        "logs/summary/ablation.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        variants=list(VARIANTS),
        submitted={variant: submitted_model(variant) for variant in VARIANTS},
        first_seed=FIRST_SEED,
        min_ocr_text_share=config["ocr"]["min_text_share"],
    script:
        "../scripts/summarize_ablation.py"
