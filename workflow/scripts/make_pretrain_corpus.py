"""Draw the generic screens and their questions that the demo's tiny model is pretrained on."""

from pathlib import Path

from vlmflow.demo.pretrain import generate_pretrain_corpus
from vlmflow.runtime.logfile import log_to

log_to(snakemake.log[0])
generate_pretrain_corpus(
    Path(snakemake.output.corpus).parent,
    n_images=snakemake.params.n_images,
    seed=snakemake.params.seed,
    image_size=tuple(snakemake.params.image_size),
)
