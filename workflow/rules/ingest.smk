# Data ingestion: every record of a split validated and normalised to one parquet table;
# bad records fail the run or go to the rejected table, per data.on_error.


rule ingest_records:
    input:
        data=data_file,
        labels=config["labels"],
    output:
        records=INGEST_OUTPUTS["records"],
        rejected=INGEST_OUTPUTS["rejected"],
        counts=INGEST_OUTPUTS["counts"],
    log:
        "logs/ingest/{split}.log",
    conda:
        "../../envs/core.yaml"
    params:
        image_dir=config["data"]["image_dir"],
        root=config["data"]["root"],
        max_image_pixels=config["data"]["max_image_pixels"],
        on_error=config["data"]["on_error"],
        upright_image_dir=config["data"]["upright_image_dir"],
    script:
        "../scripts/ingest_records.py"
