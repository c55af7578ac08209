# Label probabilities under each fold model: its held-out training records (out of fold) and every
# test record. All labels are scored from one encoding of prompt and image (prefix sharing).


rule score_fold:
    input:
        model="results/{variant}/fold{fold}/model",
        prompts="results/{variant}/prompts.parquet",
        folds="results/folds/folds.csv",
        labels=config["labels"],
    output:
        out_of_fold="results/{variant}/fold{fold}/oof_probs.parquet",
        test="results/{variant}/fold{fold}/test_probs.parquet",
    log:
        "logs/score/{variant}/fold{fold}.log",
    benchmark:
        "benchmarks/score/{variant}/fold{fold}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["score"]["threads"]
    resources:
        gpu=min(1, config["train"]["gpus_per_run"]),
    params:
        variant=variant_settings,
        device=config["score"]["device"],
        max_new_tokens=config["score"]["max_new_tokens"],
        image_pixels=image_pixel_limits(),
    script:
        "../scripts/score_fold.py"
