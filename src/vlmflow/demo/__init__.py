"""The embedded demo world: a generated MIRE-format dataset and tiny random-weight models."""

# The demo's data files, which rule make_demo_dataset writes (workflow/rules/demo.smk) and config/demo.yaml names.
DEMO_DATA = {
    "train": "resources/demo/train.json",
    "test": "resources/demo/test.json",
    "truth": "resources/demo/truth.csv",
}
