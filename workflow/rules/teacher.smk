# A teacher model behind an OpenAI-compatible endpoint writes the reason of each training image given its
# gold label, and a description of each image (train and test) for describe-then-classify variants. Each
# answer is cached per image, prompt, model and generation options, so a rerun sends nothing answered.
# Only what changes the answers reaches params; transport settings are read from config by the scripts.


rule teacher_reasons:
    input:
        records=RECORDS["train"],
        labels=config["labels"],
    output:
        reasons=TEACHER_OUTPUTS["reasons"],
        failures=TEACHER_OUTPUTS["reasons_failed"],
    log:
        "logs/teacher/{variant}/reasons.log",
    benchmark:
        "benchmarks/teacher/{variant}/reasons.tsv"
    conda:
        "../../envs/core.yaml"
    params:
        answers=teacher_answer_settings(),
        prompt=teacher_reason_prompt,
        max_chars=reason_max_chars,
        on_error=config["teacher"]["on_error"],
    script:
        "../scripts/teacher_reasons.py"


rule teacher_descriptions:
    input:
        records=expand(INGEST_OUTPUTS["records"], split=SPLITS),
    output:
        descriptions=TEACHER_OUTPUTS["descriptions"],
        failures=TEACHER_OUTPUTS["descriptions_failed"],
    log:
        "logs/teacher/{variant}/descriptions.log",
    benchmark:
        "benchmarks/teacher/{variant}/descriptions.tsv"
    conda:
        "../../envs/core.yaml"
    params:
        answers=teacher_answer_settings(),
        prompt=teacher_describe_prompt,
        max_chars=describe_max_chars,
        on_error=config["teacher"]["on_error"],
    script:
        "../scripts/teacher_descriptions.py"


# Reasons too similar to each other made the recipe's score collapse: measured on the reasons the variant
# actually trains on (the teacher's, or the template's).
rule reason_diversity:
    input:
        prompts=PROMPTS_OUTPUTS["prompts"],
    output:
        report=TEACHER_OUTPUTS["reason_diversity"],
    log:
        "logs/teacher/{variant}/reason_diversity.log",
    conda:
        "../../envs/core.yaml"
    params:
        threshold=config["teacher"]["diversity_threshold"],
        source="teacher" if teacher_configured() else "template",
    script:
        "../scripts/teacher_reason_diversity.py"
