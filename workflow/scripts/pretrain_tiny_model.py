"""Train the demo's random-weight tiny model on generic screens (demo.pretrain's budget): the demo's base."""

from pathlib import Path

from vlmflow.demo.pretrain import pretrain_tiny_model
from vlmflow.runtime.logfile import log_to

log_to(snakemake.log[0])
model = Path(snakemake.output.model)
pretrain_tiny_model(
    corpus_file=snakemake.input.corpus,
    tiny_model=snakemake.input.tiny_model,
    out_dir=model,
    # Dataset, YAML and trainer output beside the model, never inside the rule's output.
    workdir=model.with_name(f"{model.name}.work"),
    template=snakemake.params.template,
    training=snakemake.params.training,
    budget=snakemake.params.budget,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    log_path=snakemake.log[0],
)
