"""Where a variant's final models live, and whose a results path is: the one home of those paths, on the
folders of the results layout (``runtime.layout``: ``AVERAGED_DIR``, ``RETRAINED_DIR``, ``ROUND_DIR``).

``common.smk`` builds its inputs from these functions, and the scripts that read many variants' or
models' files key them by ``variant_of``, ``final_model_of`` and ``final_fit_of`` instead of by their
position in a list that must match another list.

Layout: ``results/<variant>/average_folds/`` is the weight-averaged fold model (named ``average_folds``);
``results/<variant>/retrain/<steps>/`` holds the model retrained on a step combination (named
``retrain_<steps>``), fitted once per training seed (``final.seeds``): ``seed<s>/round<n>/`` is round n
of seed s's fit, whose final round is the last pseudo-label round (rounds chain within a seed). Files
about a retrained model across its seeds lie in ``retrain/<steps>/`` itself. The first seed's fit is the
one a submission comes from.

Standard library only: common.smk imports it when Snakemake starts.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from vlmflow.recipe.steps import (
    AVERAGE_FOLDS,
    STEP_SETS,
    final_round,
    retrained_model_name,
    retrained_steps,
)
from vlmflow.runtime.layout import AVERAGED_DIR, RESULTS, RETRAINED_DIR, ROUND_DIR

AVERAGED = AVERAGE_FOLDS  # the folder of the weight-averaged fold model, named as the model
RETRAIN = "retrain"
RETRAINED_PREFIX = retrained_model_name("")
SEED_FOLDER = re.compile(r"seed(\d+)")
# The {final_model} wildcard of the layout's FINAL_MODEL_DIR: average_folds, or a round of a retrained fit.
FINAL_MODEL_WILDCARD = rf"{AVERAGED}|{RETRAIN}/({'|'.join(STEP_SETS)})/seed\d+/round\d+"


def training_seeds(configured: list[int] | None, train_seed: int) -> list[int]:
    """The seeds each retrained model is fitted with (``final.seeds``); null: one fit, seeded by ``train.seed``."""
    return list(configured) if configured else [train_seed]


def ablation_variants(configured: list[str] | None, variants: list[str]) -> list[str]:
    """The variants whose final models are the whole ablation, every seed (``final.ablation_variants``); null:
    all. The others retrain only the submission's combination, with the first seed."""
    if configured is None:
        return list(variants)
    unknown = [name for name in configured if name not in variants]
    if unknown:
        raise ValueError(
            f"final.ablation_variants names {unknown}, which are not variants (the variants are {list(variants)}): "
            "list some of the variants there, or null for every variant"
        )
    return list(configured)


def retrained_dir(variant: str, name: str) -> str:
    """The folder of retrained model ``name`` (``retrain_<steps>``): its seeds' fits and what spans them."""
    if not name.startswith(RETRAINED_PREFIX):
        raise ValueError(f"{name!r} is not a retrained model name ({RETRAINED_PREFIX}<steps>)")
    return RETRAINED_DIR.format(variant=variant, steps=retrained_steps(name))


def round_dir(variant: str, steps: str, seed: int, round_: int) -> str:
    """Round ``round_`` of seed ``seed``'s fit of the model retrained on the step combination ``steps``."""
    return ROUND_DIR.format(variant=variant, steps=steps, seed=seed, round=round_)


def final_model_dir(variant: str, name: str, rounds: int, seed: int | None = None) -> str:
    """The folder of final model ``name`` (``average_folds``, or ``retrain_<steps>`` fitted with ``seed``):
    its final round."""
    if name == AVERAGE_FOLDS:
        return AVERAGED_DIR.format(variant=variant)
    if not name.startswith(RETRAINED_PREFIX):
        raise ValueError(f"{name!r} is not a final model name ({AVERAGE_FOLDS} or {RETRAINED_PREFIX}<steps>)")
    if seed is None:
        raise ValueError(f"{name} is fitted once per seed: name the seed")
    steps = retrained_steps(name)
    return round_dir(variant, steps, seed, final_round(steps, rounds))


def final_model_dirs(
    variant: str, names: list[str], rounds: int, seeds: list[int]
) -> dict[tuple[str, int | None], str]:
    """Each final fit's folder, by (name, seed): the averaged fold model once (seed None), a retrained model
    once per seed."""
    return {
        (name, seed): final_model_dir(variant, name, rounds, seed)
        for name in names
        for seed in ([None] if name == AVERAGE_FOLDS else seeds)
    }


def variant_of(path: str) -> str:
    """The variant a results path belongs to (``results/<variant>/...``)."""
    parts = PurePosixPath(path).parts
    if len(parts) < 3 or parts[0] != RESULTS:
        raise ValueError(f"{path}: not a variant's results path (results/<variant>/...)")
    return parts[1]


def final_fit_of(path: str) -> tuple[str, str, int | None]:
    """(variant, final model name, seed) of a path inside a final model's folder; the seed is None for the
    averaged fold model and for a retrained model's files across its seeds (``retrain/<steps>/<file>``)."""
    parts = PurePosixPath(path).parts
    variant = variant_of(path)
    if parts[2] == AVERAGED:
        return variant, AVERAGE_FOLDS, None
    if parts[2] == RETRAIN and len(parts) > 4:
        seed = SEED_FOLDER.fullmatch(parts[4])
        return variant, retrained_model_name(parts[3]), int(seed[1]) if seed else None
    raise ValueError(f"{path}: not inside a final model's folder")


def final_model_of(path: str) -> tuple[str, str]:
    """(variant, final model name) of a path inside a final model's folder, whichever seed's."""
    variant, name, _ = final_fit_of(path)
    return variant, name
