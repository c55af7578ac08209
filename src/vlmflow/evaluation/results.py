"""The run's JSON results read back, keyed by whose they are: the one reader of the ablation summary
(``summarize_ablation``) and of MLflow logging (``log_variant_to_mlflow``).

A file's key comes from its path (``recipe.final_models``: ``variant_of``, ``final_model_of``,
``final_fit_of``), never from its position in a list that another list must match.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmflow.recipe.final_models import final_fit_of, final_model_of, variant_of


def read_json(path: str | Path) -> Any:
    """One JSON file's contents."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def read_optional_json(paths: list[str]) -> Any | None:
    """The contents of the one file of an input that may be empty (``[]``: None)."""
    if len(paths) > 1:
        raise ValueError(f"expected at most one file, got {len(paths)}: {list(paths)}")
    return read_json(paths[0]) if paths else None


def by_variant(paths: Iterable[str]) -> dict[str, Any]:
    """variant -> contents of its file (``results/<variant>/...``)."""
    return {variant_of(path): read_json(path) for path in paths}


def by_variant_and_model(
    paths: Iterable[str], variants: Iterable[str] = (), seed: int | None = None
) -> dict[str, dict[str, Any]]:
    """variant -> final model -> contents of its file; every one of ``variants`` is a key, also one without
    files. With ``seed``, only the files of that seed's fits (a fit's own ``seed<s>/`` folder)."""
    grouped: dict[str, dict[str, Any]] = {variant: {} for variant in variants}
    for path in paths:
        variant, name, fit_seed = final_fit_of(path)
        if seed is None or fit_seed == seed:
            grouped.setdefault(variant, {})[name] = read_json(path)
    return grouped


def _one_variant(paths: Iterable[str]) -> list[str]:
    paths = list(paths)
    variants = sorted({variant_of(path) for path in paths})
    if len(variants) > 1:
        raise ValueError(f"files of one variant expected, got files of {variants}")
    return paths


def by_model(paths: Iterable[str]) -> dict[str, Any]:
    """One variant's files: final model name -> contents of its file."""
    return {final_model_of(path)[1]: read_json(path) for path in _one_variant(paths)}


def fit_paths(paths: Iterable[str]) -> dict[tuple[str, int | None], str]:
    """One variant's files: (final model name, seed) -> the path of its fit's file."""
    return {final_fit_of(path)[1:]: path for path in _one_variant(paths)}


def by_fit(paths: Iterable[str]) -> dict[tuple[str, int | None], Any]:
    """One variant's files: (final model name, seed) -> contents of its fit's file."""
    return {fit: read_json(path) for fit, path in fit_paths(paths).items()}
