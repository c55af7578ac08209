# The embedded demo world: a generated MIRE-format dataset and a tiny random-weight model of a real
# family (resources/demo/tiny-<family>), both from config["demo"], and that model pretrained on generic
# screens (resources/demo/pretrained-<family>, demo.pretrain). They are built only when data.* and
# model.* point at them.


rule make_demo_dataset:
    input:
        labels=config["labels"],
    output:
        train=DEMO_DATA["train"],
        test=DEMO_DATA["test"],
        truth=DEMO_DATA["truth"],
        images=directory("resources/demo/images"),
    log:
        "logs/demo/make_demo_dataset.log",
    benchmark:
        "benchmarks/demo/make_demo_dataset.tsv"
    conda:
        "../../envs/core.yaml"
    params:
        # Only what draws the dataset: editing the model's or the pretraining's keys must not redraw it.
        demo={
            key: config["demo"][key]
            for key in (
                "n_train",
                "n_test",
                "flip_fraction",
                "seed",
                "image_width",
                "image_height",
            )
        },
    script:
        "../scripts/make_demo_dataset.py"


rule build_tiny_model:
    input:
        labels=config["labels"],
    output:
        model=directory("resources/demo/tiny-{demo_model}"),
    log:
        "logs/demo/build_tiny_model/{demo_model}.log",
    benchmark:
        "benchmarks/demo/build_tiny_model/{demo_model}.tsv"
    conda:
        "../../envs/core.yaml"
    params:
        seed=config["demo"]["seed"],
        size=config["demo"]["model"],
        family=demo_model_family,
    script:
        "../scripts/build_tiny_model.py"


rule make_pretrain_corpus:
    output:
        corpus="resources/demo/pretrain_corpus/corpus.json",
        images=directory("resources/demo/pretrain_corpus/images"),
    log:
        "logs/demo/make_pretrain_corpus.log",
    benchmark:
        "benchmarks/demo/make_pretrain_corpus.tsv"
    conda:
        "../../envs/core.yaml"
    params:
        seed=config["demo"]["pretrain"]["seed"],
        n_images=config["demo"]["pretrain"]["n_images"],
        image_size=[config["demo"]["image_width"], config["demo"]["image_height"]],
    script:
        "../scripts/make_pretrain_corpus.py"


rule pretrain_tiny_model:
    input:
        corpus="resources/demo/pretrain_corpus/corpus.json",
        images="resources/demo/pretrain_corpus/images",
        tiny_model="resources/demo/tiny-{demo_model}",
    output:
        model=directory("resources/demo/pretrained-{demo_model}"),
    log:
        "logs/demo/pretrain_tiny_model/{demo_model}.log",
    benchmark:
        "benchmarks/demo/pretrain_tiny_model/{demo_model}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    params:
        template=demo_model_template,
        # The fold fine-tunes' CPU settings, with the pretraining's own budget (demo.pretrain).
        training=config["train"]["hyperparameters"],
        budget={
            key: config["demo"]["pretrain"][key]
            for key in ("max_steps", "batch_size", "learning_rate")
        },
        seed=config["demo"]["seed"],
    script:
        "../scripts/pretrain_tiny_model.py"


# The general set is split once: general.json may be mixed into final fits, general_held_out.json never is
# (it measures general ability, workflow/rules/general.smk).
rule make_demo_general_data:
    output:
        general="resources/demo/general.json",
        held_out="resources/demo/general_held_out.json",
        report="resources/demo/general_split.json",
    log:
        "logs/demo/make_demo_general_data.log",
    # Seconds of bookkeeping: on a cluster it runs beside Snakemake, not as a queued job.
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        seed=config["demo"]["seed"],
        n=config["demo"]["general_records"],
        held_out=config["demo"]["general_held_out"],
    script:
        "../scripts/make_demo_general_data.py"
