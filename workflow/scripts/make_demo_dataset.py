"""Generate the embedded demo dataset (MIRE JSON, images, truth file) from config["demo"]."""

from pathlib import Path

from vlmflow.data.labels import load_labels
from vlmflow.demo.dataset import generate_demo_dataset
from vlmflow.runtime.logfile import log_to

log_to(snakemake.log[0])
demo = snakemake.params.demo
generate_demo_dataset(
    Path(snakemake.output.train).parent,
    load_labels(snakemake.input.labels),
    n_train=demo["n_train"],
    n_test=demo["n_test"],
    flip_fraction=demo["flip_fraction"],
    seed=demo["seed"],
    image_size=(demo["image_width"], demo["image_height"]),
)
