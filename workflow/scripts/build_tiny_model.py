"""Build the demo's tiny random-weight model of one family, its tokenizer trained on the demo's own text."""

from vlmflow.data.labels import baseline_prompt, described_prompt, load_labels
from vlmflow.demo.dataset import demo_vocabulary
from vlmflow.demo.tiny_model import build_tiny_model
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
labels = load_labels(snakemake.input.labels)
corpus = [baseline_prompt(labels), described_prompt(labels), *demo_vocabulary()]
size = snakemake.params.size
build_tiny_model(
    output.model,
    corpus,
    family=snakemake.params.family,
    seed=snakemake.params.seed,
    text_hidden_size=size["text_hidden_size"],
    text_layers=size["text_layers"],
    vision_depth=size["vision_depth"],
    vocab_size=size["vocab_size"],
    max_visual_tokens=size["max_visual_tokens"],
)
output.commit()
