"""vlmflow: the MIRE image-classification recipe for vision-language models as a library."""

__version__ = "0.1.0"
