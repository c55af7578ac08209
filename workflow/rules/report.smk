# What the Snakemake report (`make report`: snakemake --report results/report.html) shows beyond the
# outputs other rules mark with report(): plots and pages made for reading, from finished results.
# Captions live in workflow/report/. Nothing here feeds a model, so none of it reruns training.


rule plot_loss_curves:
    input:
        models=each_fold(TRAIN_OUTPUTS["model"]),
    output:
        plot=report(
            REPORT_OUTPUTS["loss_curves"],
            caption="../report/loss_curves.rst",
            category="Training",
            subcategory="{variant}",
            labels={"variant": "{variant}", "result": "loss curves, every fold"},
        ),
    log:
        "logs/report/{variant}_loss_curves.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        folds=FOLDS,
    script:
        "../scripts/plot_loss_curves.py"


rule plot_pseudo_labels:
    input:
        pseudo_labels=RECIPE_OUTPUTS["pseudo_labels"],
        report=RECIPE_OUTPUTS["pseudo_report"],
    output:
        plot=report(
            REPORT_OUTPUTS["pseudo_labels_plot"],
            caption="../report/pseudo_labels.rst",
            category="Pseudo-labels",
            labels={
                "variant": "{variant}",
                "result": "pseudo-labels per class and confidence",
            },
        ),
        counts=REPORT_OUTPUTS["pseudo_label_counts"],
    log:
        "logs/report/{variant}_pseudo_labels.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/plot_pseudo_labels.py"


rule embed_review_images:
    input:
        review=RECIPE_OUTPUTS["review"],
    output:
        page=report(
            REPORT_OUTPUTS["review_page"],
            caption="../report/label_review.rst",
            category="Label correction",
            labels={"variant": "{variant}", "result": "flagged labels to review"},
        ),
    log:
        "logs/report/{variant}_label_review.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/embed_review_images.py"


rule write_summary_page:
    input:
        table=EVALUATE_OUTPUTS["summary_table"],
    output:
        page=report(
            REPORT_OUTPUTS["summary_page"],
            caption="../report/summary_table.rst",
            category="Ablation summary",
            labels={"result": "table: weighted F1 per variant and final model"},
        ),
    log:
        "logs/report/summary_page.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/write_summary_page.py"


rule write_run_config:
    output:
        config=REPORT_OUTPUTS["run_config"],
        page=report(
            REPORT_OUTPUTS["run_config_page"],
            caption="../report/run_config.rst",
            category="Configuration",
            labels={"result": "configuration of this run"},
        ),
    log:
        "logs/report/run_config.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        config=config,
    script:
        "../scripts/write_run_config.py"
