# General ability kept (final.general_data.held_out): every final model answers general records held out of
# all fits, and results/summary.md reports its exact-match accuracy. The retrained models train with
# general data mixed in (final.general_data.path), the averaged fold model without it; the untuned base
# model is the reference.


rule evaluate_general_ability:
    input:
        model=RECIPE_OUTPUTS["final_model"],
        held_out=general_held_out(),
        mixed=general_data(),
    output:
        metrics=GENERAL_OUTPUTS["metrics"],
    log:
        "logs/general/{variant}/{final_model}.log",
    benchmark:
        "benchmarks/general/{variant}/{final_model}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["score"]["threads"]
    resources:
        gpu=min(1, config["train"]["gpus_per_run"]),
        mem_mb=host_memory("general_ability"),
        gpu_mem_mb=gpu_memory("general_ability"),
    params:
        model=model_to_load,
        format=config["final"]["general_data"]["format"],
        batch_size=config["score"]["batch_size"],
        device=config["score"]["device"],
    script:
        "../scripts/evaluate_general_ability.py"


use rule evaluate_general_ability as evaluate_base_general_ability with:
    input:
        model=base_model(),  # the demo's built model; a hub id is no file
        held_out=general_held_out(),
        mixed=general_data(),
    output:
        metrics=GENERAL_OUTPUTS["base_metrics"],
    log:
        "logs/general/base_model.log",
    benchmark:
        "benchmarks/general/base_model.tsv"
