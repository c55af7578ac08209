# What the Snakemake report (`make report`: snakemake --report results/report.html) shows beyond the
# outputs other rules mark with report(): plots and pages made for reading, from finished results.
# Captions live in workflow/report/. Nothing here feeds a model, so none of it reruns training.


rule plot_loss_curves:
    input:
        models=expand("results/{{variant}}/fold{fold}/model", fold=FOLDS),
    output:
        plot=report(
            "results/{variant}/loss_curves.png",
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
        pseudo_labels="results/{variant}/pseudo_labels.csv",
        report="results/{variant}/pseudo_labels.json",
    output:
        plot=report(
            "results/{variant}/pseudo_labels.png",
            caption="../report/pseudo_labels.rst",
            category="Pseudo-labels",
            labels={
                "variant": "{variant}",
                "result": "pseudo-labels per class and confidence",
            },
        ),
        counts="results/{variant}/pseudo_label_counts.csv",
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
        review="results/{variant}/label_review.html",
    output:
        page=report(
            "results/{variant}/label_review_embedded.html",
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
        table="results/summary.csv",
    output:
        page=report(
            "results/summary.html",
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
        config="results/run_config.yaml",
        page=report(
            "results/run_config.html",
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
