"""The embedded demo world: a generated MIRE-format dataset and tiny random-weight models."""
