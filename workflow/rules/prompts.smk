# Prompt variants: one prompt table and one LLaMA-Factory dataset per variant. A variant's switches
# reach its rule through params, so editing one variant reruns only that variant's jobs. Reason and
# describe variants read the teacher's tables when a teacher is configured (workflow/rules/teacher.smk).


rule build_prompts:
    input:
        records=expand(INGEST_OUTPUTS["records"], split=SPLITS),
        ocr=ocr_table_if_needed,
        teacher_reasons=teacher_reasons_if_needed,
        teacher_descriptions=teacher_descriptions_if_needed,
        labels=config["labels"],
    output:
        prompts=PROMPTS_OUTPUTS["prompts"],
        dataset=PROMPTS_OUTPUTS["dataset"],
        dataset_info=PROMPTS_OUTPUTS["dataset_info"],
    log:
        "logs/prompts/{variant}.log",
    priority: FOLD_WORK_PRIORITY
    conda:
        "../../envs/core.yaml"
    params:
        variant=variant_settings,
        warn_chars=config["prompt"]["warn_chars"],
        max_chars=config["prompt"]["max_chars"],
    script:
        "../scripts/build_prompts.py"
