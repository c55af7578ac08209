# Final models retrained on the recipe's step combinations, per variant: the corrected labels, the
# test pseudo-labels (in rounds, Noisy-Student style) or both, with classes balanced and general data
# mixed in. Each combination is fitted once per seed (final.seeds), its rounds chained within the seed;
# each fit is a child run of the variant's MLflow run; each model scores the test set.


rule build_final_training_set:
    input:
        records=final_training_labels,
        test_records=RECORDS["test"],
        pseudo_labels=round_pseudo_labels,
        ocr=ocr_table_if_needed,
        teacher_reasons=teacher_reasons_if_needed,
        teacher_descriptions=teacher_descriptions_if_needed,
        general=general_data(),
        labels=config["labels"],
    output:
        prompts=RETRAIN_OUTPUTS["prompts"],
        general=RETRAIN_OUTPUTS["general"],
        report=RETRAIN_OUTPUTS["training_set"],
    log:
        "logs/retrain/{variant}/{steps}/seed{seed}/round{round}_training_set.log",
    priority: FINAL_FIT_PRIORITY
    conda:
        "../../envs/core.yaml"
    params:
        variant=variant_settings,
        class_floor=config["final"]["class_floor"],
        general_format=config["final"]["general_data"]["format"],
        general_ratio=config["final"]["general_data"]["ratio"],
        seed=fit_seed,
        warn_chars=config["prompt"]["warn_chars"],
        max_chars=config["prompt"]["max_chars"],
    script:
        "../scripts/build_final_training_set.py"


rule train_final:
    input:
        prompts=RETRAIN_OUTPUTS["prompts"],
        general=RETRAIN_OUTPUTS["general"],
        parent_run=TRAIN_OUTPUTS["variant_run"],
        base_model=base_model(),
        deepspeed=deepspeed_config(),
    output:
        model=directory(RETRAIN_OUTPUTS["model"]),
        config=RETRAIN_OUTPUTS["config"],
        run=RETRAIN_OUTPUTS["run"],
    log:
        "logs/retrain/{variant}/{steps}/seed{seed}/round{round}.log",
    benchmark:
        "benchmarks/retrain/{variant}/{steps}/seed{seed}/round{round}.tsv"
    priority: FINAL_FIT_PRIORITY
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=config["train"]["gpus_per_run"],
        mem_mb=host_memory("fine_tune"),
        gpu_mem_mb=gpu_memory("fine_tune"),
    params:
        training=final_training_settings,
    script:
        "../scripts/train_final.py"


rule select_round_pseudo_labels:
    input:
        test=[RETRAIN_OUTPUTS["test"]],
        labels=config["labels"],
    output:
        pseudo_labels=RETRAIN_OUTPUTS["pseudo_labels"],
        report=RETRAIN_OUTPUTS["pseudo_report"],
    log:
        "logs/retrain/{variant}/{steps}/seed{seed}/round{round}_pseudo.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        tau=config["pseudo"]["tau"],
        min_agreeing_folds=1,  # one retrained model: agreement is trivially met
        per_class_cap=config["pseudo"]["per_class_cap"],
    script:
        "../scripts/select_pseudo_labels.py"
