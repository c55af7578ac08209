"""Prompt variants as the workflow makes them: switches not given take the schema's defaults."""

from __future__ import annotations

from pathlib import Path

from snakemake.utils import validate

from vlmflow.prompting.variants import PromptVariant

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def make_variant(name: str, **switches) -> PromptVariant:
    """The variant a config entry ``{name, **switches}`` becomes once validated against the schema."""
    config = {"variants": [{"name": name, **switches}]}
    validate(config, str(SCHEMA))
    return PromptVariant.from_config(config["variants"][0])
