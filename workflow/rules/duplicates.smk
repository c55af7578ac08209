# Duplicate images: exact copies (sha256) and near-duplicates (perceptual hash) within the training records
# and between them and the test records. Their groups keep copies in one fold, their label conflicts go to the
# label review, and test copies of training images may take the training label in the submission.


rule find_duplicates:
    input:
        train=RECORDS["train"],
        test=RECORDS["test"],
    output:
        exact=DUPLICATES_OUTPUTS["exact"],
        near=DUPLICATES_OUTPUTS["near"],
        groups=DUPLICATES_OUTPUTS["groups"],
        conflicts=DUPLICATES_OUTPUTS["conflicts"],
        test_copies=DUPLICATES_OUTPUTS["test_copies"],
        summary=DUPLICATES_OUTPUTS["summary"],
    log:
        "logs/duplicates/find_duplicates.log",
    conda:
        "../../envs/core.yaml"
    params:
        near_duplicate_distance=config["data"]["near_duplicate_distance"],
    script:
        "../scripts/find_duplicates.py"
