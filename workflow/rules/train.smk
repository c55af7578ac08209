# Per-fold full fine-tunes through `llamafactory-cli train`, each a nested MLflow run under its
# variant's parent run. One job creates the MLflow store and experiment before any other touches
# it: two processes migrating a new SQLite store at once fail. The fold's YAML is written from
# config.train; DeepSpeed is used when named.


rule create_mlflow_experiment:
    output:
        experiment=TRAIN_OUTPUTS["experiment"],
    log:
        "logs/mlflow/create_experiment.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        experiment=config["mlflow"]["experiment"],
    script:
        "../scripts/create_mlflow_experiment.py"


rule start_variant_run:
    input:
        experiment=TRAIN_OUTPUTS["experiment"],
    output:
        run=TRAIN_OUTPUTS["variant_run"],
    log:
        "logs/mlflow/{variant}.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        variant=variant_settings,
    script:
        "../scripts/start_variant_run.py"


rule train_fold:
    input:
        prompts=PROMPTS_OUTPUTS["prompts"],
        folds=FOLDS_OUTPUTS["folds"],
        parent_run=TRAIN_OUTPUTS["variant_run"],
        base_model=base_model(),
        deepspeed=deepspeed_config(),
    output:
        model=fold_model_folder(),
        config=TRAIN_OUTPUTS["config"],
        run=TRAIN_OUTPUTS["run"],
    log:
        "logs/train/{variant}/fold{fold}.log",
    benchmark:
        "benchmarks/train/{variant}/fold{fold}.tsv"
    priority: FOLD_WORK_PRIORITY
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus_per_run"],
        mem_mb=host_memory("fine_tune"),
        gpu_mem_mb=gpu_memory("fine_tune"),
    params:
        training=training_settings,
    script:
        "../scripts/train_fold.py"
