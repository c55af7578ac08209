# The machine check before the first GPU job (vlmflow.runtime.machine): the driver against torch's CUDA, the GPU
# count, card and host memory against one job's needs, flash-attn, DeepSpeed's CPU Adam and vLLM's platform,
# every problem named at once. A CPU run (train.gpus_per_run: 0) passes without a probe.


rule check_machine:
    input:
        experiment=TRAIN_OUTPUTS["experiment"],
        deepspeed=deepspeed_config(),
    output:
        machine=MACHINE_OUTPUTS["machine"],
    # The report is a log too: Snakemake removes a failed job's output, and keeps its logs.
    log:
        log="logs/machine/check_machine.log",
        report="logs/machine/machine.json",
    # It checks the machine Snakemake runs on, in seconds, before any job is queued.
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        train=config["train"],
        score=scoring_settings(),
        model=config["model"],
        check=machine_check_settings(),
    script:
        "../scripts/check_machine.py"
