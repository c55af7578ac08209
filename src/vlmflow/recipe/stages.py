"""Names of the recipe's stage combinations and final models.

Kept free of heavy imports: the Snakefile imports this module on every start, and a no-op
`snakemake` should not pay for pandas or matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable

STAGES = ("correction", "pseudo")
NO_STAGES = "none"
FOLD_ENSEMBLE = "fold_ensemble"
AVERAGE_FOLDS = "average_folds"


def stage_set_name(stages: Iterable[str]) -> str:
    """The directory and run name of a stage combination: its stages in recipe order, or ``none``."""
    stages = list(stages)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    return "_".join(stage for stage in STAGES if stage in stages) or NO_STAGES


def stage_set(name: str) -> list[str]:
    """The stages of a combination name written by ``stage_set_name``."""
    stages = [] if name == NO_STAGES else name.split("_")
    if stage_set_name(stages) != name:
        raise ValueError(f"{name!r} is not a stage combination name")
    return stages


def final_round(name: str, rounds: int) -> int:
    """The round whose model is final: the last pseudo-label round, or round 1 without pseudo-labels."""
    return rounds if "pseudo" in stage_set(name) else 1


def retrained_model_name(stages: str) -> str:
    return f"retrain_{stages}"
