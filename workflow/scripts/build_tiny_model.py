"""Build the demo's tiny random-weight model of one family, its tokenizer trained on the demo's own text."""

from vlmflow.demo.tiny_model import build_demo_model
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
build_demo_model(
    output.model,
    snakemake.input.labels,
    family=snakemake.params.family,
    seed=snakemake.params.seed,
    size=snakemake.params.size,
)
output.commit()
