"""Where a variant's final models live, and whose a results path is: the one home of those paths.

``common.smk`` builds its inputs from these functions, and the scripts that read many variants' or
models' files key them by ``variant_of`` and ``final_model_of`` instead of by their position in a list
that must match another list.

Layout: ``results/<variant>/average_folds/`` is the weight-averaged fold model (named ``average_folds``);
``results/<variant>/retrain/<steps>/round<n>/`` is round n of the model retrained on a step
combination (named ``retrain_<steps>``), whose final round is the last pseudo-label round.

Standard library only: common.smk imports it when Snakemake starts.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from vlmflow.recipe.steps import AVERAGE_FOLDS, final_round, retrained_model_name

RESULTS = "results"
AVERAGED = AVERAGE_FOLDS  # the folder of the weight-averaged fold model, named as the model
RETRAIN = "retrain"
RETRAINED_PREFIX = retrained_model_name("")


def round_dir(variant: str, steps: str, round_: int) -> str:
    """Round ``round_`` of the model retrained on the step combination ``steps``."""
    return f"{RESULTS}/{variant}/{RETRAIN}/{steps}/round{round_}"


def final_model_dir(variant: str, name: str, rounds: int) -> str:
    """The folder of final model ``name`` (``average_folds`` or ``retrain_<steps>``): its final round."""
    if name == AVERAGE_FOLDS:
        return f"{RESULTS}/{variant}/{AVERAGED}"
    if not name.startswith(RETRAINED_PREFIX):
        raise ValueError(f"{name!r} is not a final model name ({AVERAGE_FOLDS} or {RETRAINED_PREFIX}<steps>)")
    steps = name.removeprefix(RETRAINED_PREFIX)
    return round_dir(variant, steps, final_round(steps, rounds))


def final_model_dirs(variant: str, names: list[str], rounds: int) -> dict[str, str]:
    """Each final model's folder, by name."""
    return {name: final_model_dir(variant, name, rounds) for name in names}


def variant_of(path: str) -> str:
    """The variant a results path belongs to (``results/<variant>/...``)."""
    parts = PurePosixPath(path).parts
    if len(parts) < 3 or parts[0] != RESULTS:
        raise ValueError(f"{path}: not a variant's results path (results/<variant>/...)")
    return parts[1]


def final_model_of(path: str) -> tuple[str, str]:
    """(variant, final model name) of a path inside a final model's folder."""
    parts = PurePosixPath(path).parts
    variant = variant_of(path)
    if parts[2] == AVERAGED:
        return variant, AVERAGE_FOLDS
    if parts[2] == RETRAIN and len(parts) > 4:
        return variant, retrained_model_name(parts[3])
    raise ValueError(f"{path}: not inside a final model's folder")
