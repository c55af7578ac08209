# Metrics per variant (out-of-fold weighted F1, the competition metric; test metrics when a truth
# file exists), logged to the variant's MLflow runs, and one summary table across variants.


rule evaluate_variant:
    input:
        out_of_fold=expand(
            "results/{{variant}}/fold{fold}/oof_probs.parquet", fold=FOLDS
        ),
        test=expand("results/{{variant}}/fold{fold}/test_probs.parquet", fold=FOLDS),
        train_records="results/data/train.parquet",
        truth=truth_file(),
        labels=config["labels"],
    output:
        metrics="results/{variant}/metrics.json",
        fold_metrics="results/{variant}/fold_metrics.csv",
        out_of_fold="results/{variant}/oof_probs.parquet",
        test="results/{variant}/test_probs.parquet",
        report="results/{variant}/per_class_report.csv",
        confusion_matrix=report(
            "results/{variant}/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="Training",
            subcategory="{variant}",
            labels={"variant": "{variant}", "result": "confusion matrix, out of fold"},
        ),
        fold_reports=expand(
            "results/{{variant}}/fold{fold}/per_class_report.csv", fold=FOLDS
        ),
        fold_matrices=[
            report(
                f"results/{{variant}}/fold{fold}/confusion_matrix.png",
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
        parent_run="results/{variant}/mlflow_run.json",
        fold_runs=expand("results/{{variant}}/fold{fold}/mlflow_run.json", fold=FOLDS),
        metrics="results/{variant}/metrics.json",
        fold_metrics="results/{variant}/fold_metrics.csv",
        report="results/{variant}/per_class_report.csv",
        confusion_matrix="results/{variant}/confusion_matrix.png",
        fold_reports=expand(
            "results/{{variant}}/fold{fold}/per_class_report.csv", fold=FOLDS
        ),
        fold_matrices=expand(
            "results/{{variant}}/fold{fold}/confusion_matrix.png", fold=FOLDS
        ),
        correction_scores="results/{variant}/correction_scores.json",
        corrections="results/{variant}/label_corrections.csv",
        review="results/{variant}/label_review.html",
        pseudo_report="results/{variant}/pseudo_labels.json",
        pseudo_labels="results/{variant}/pseudo_labels.csv",
        decisions="results/{variant}/label_decisions.csv",
        reason_diversity=reason_diversity_if_needed,
        submission="results/{variant}/submission.csv",
        submission_metrics="results/{variant}/submission_metrics.json",
        final_metrics=lambda wildcards: final_model_metrics(wildcards.variant),
        fit_metrics=lambda wildcards: retrained_files(
            wildcards.variant, "test_metrics.json"
        ),
        retrained_runs=lambda wildcards: retrained_files(
            wildcards.variant, "mlflow_run.json"
        ),
        training_sets=lambda wildcards: retrained_files(
            wildcards.variant, "training_set.json"
        ),
        general_metrics=lambda wildcards: general_ability_metrics(wildcards.variant),
    output:
        logged="results/{variant}/mlflow_logged.json",
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
        metrics=expand("results/{variant}/metrics.json", variant=VARIANTS),
        correction_scores=expand(
            "results/{variant}/correction_scores.json", variant=VARIANTS
        ),
        final_metrics=[
            path for variant in VARIANTS for path in final_model_metrics(variant)
        ],
        logged=expand("results/{variant}/mlflow_logged.json", variant=VARIANTS),
        general=[
            path for variant in VARIANTS for path in general_ability_metrics(variant)
        ],
        base_general=base_general_ability_metrics(),
        training_sets=[
            path
            for variant in VARIANTS
            for path in retrained_files(variant, "training_set.json")
        ],
        experiment="results/mlflow_experiment.json",
        stages=expand("results/{variant}/accounting/stages.json", variant=VARIANTS),
    output:
        table="results/summary.csv",
        markdown="results/summary.md",
        warnings="results/warnings.txt",
        chart=report(
            "results/summary.png",
            caption="../report/summary_chart.rst",
            category="Ablation summary",
            labels={"result": "bar chart: weighted F1 per variant and final model"},
        ),
        run="results/summary_mlflow_run.json",
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
