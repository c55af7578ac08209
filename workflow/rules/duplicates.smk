# Duplicate images: exact copies (sha256) and near-duplicates (perceptual hash) within the training records
# and between them and the test records. Their groups keep copies in one fold, their label conflicts go to the
# label review, and test copies of training images may take the training label in the submission.


rule find_duplicates:
    input:
        train="results/data/train.parquet",
        test="results/data/test.parquet",
    output:
        exact="results/data/duplicates.csv",
        near="results/data/near_duplicates.csv",
        groups="results/data/duplicate_groups.csv",
        conflicts="results/data/label_conflicts.csv",
        test_copies="results/data/test_copies_of_train.csv",
        summary="results/data/duplicates.json",
    log:
        "logs/duplicates/find_duplicates.log",
    conda:
        "../../envs/core.yaml"
    params:
        near_duplicate_distance=config["data"]["near_duplicate_distance"],
    script:
        "../scripts/find_duplicates.py"
