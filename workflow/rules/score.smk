# Label probabilities under each fold model: its held-out training records (out of fold) and every
# test record. All labels are scored from one encoding of prompt and image (prefix sharing). The test
# records are split into score.shards jobs, each leasing its own GPU; score_fold scores the first shard
# with the held-out records, score_test_shard the others, and merge_test_shards joins them.


rule score_fold:
    input:
        model=TRAIN_OUTPUTS["model"],
        prompts=PROMPTS_OUTPUTS["prompts"],
        folds=FOLDS_OUTPUTS["folds"],
        labels=config["labels"],
    output:
        out_of_fold=SCORE_OUTPUTS["out_of_fold"],
        test_shard=fill(SCORE_OUTPUTS["test_shard"], test_shard=0),
    log:
        "logs/score/{variant}/fold{fold}.log",
    benchmark:
        "benchmarks/score/{variant}/fold{fold}.tsv"
    priority: FOLD_WORK_PRIORITY
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
        shards=config["score"]["shards"],
    script:
        "../scripts/score_fold.py"


rule score_test_shard:
    input:
        model=TRAIN_OUTPUTS["model"],
        prompts=PROMPTS_OUTPUTS["prompts"],
        labels=config["labels"],
    output:
        test=SCORE_OUTPUTS["test_shard"],
    log:
        "logs/score/{variant}/fold{fold}_test_shard{test_shard}.log",
    benchmark:
        "benchmarks/score/{variant}/fold{fold}_test_shard{test_shard}.tsv"
    priority: FOLD_WORK_PRIORITY
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
        shard=lambda wildcards: int(wildcards.test_shard),
        shards=config["score"]["shards"],
    script:
        "../scripts/score_test_records.py"


rule merge_test_shards:
    input:
        shards=[
            fill(SCORE_OUTPUTS["test_shard"], test_shard=shard)
            for shard in range(config["score"]["shards"])
        ],
        prompts=PROMPTS_OUTPUTS["prompts"],
    output:
        test=SCORE_OUTPUTS["test"],
    log:
        "logs/score/{variant}/fold{fold}_merge.log",
    priority: FOLD_WORK_PRIORITY
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/merge_test_shards.py"
