"""Names of the recipe's steps after the fold models, their combinations, and the final models.

"Stage" is a stage of the pipeline (ingestion, OCR, prompts, ...); a "step" is one of the recipe's
optional steps a final model is retrained with: label correction and pseudo-labels.

Kept free of heavy imports: the Snakefile imports this module on every start, and a no-op
`snakemake` should not pay for pandas or matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

STEPS = ("correction", "pseudo")
NO_STEPS = "none"
FOLD_ENSEMBLE = "fold_ensemble"
AVERAGE_FOLDS = "average_folds"


def step_set_name(steps: Iterable[str]) -> str:
    """The directory and run name of a step combination: its steps in recipe order, or ``none``."""
    steps = list(steps)
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; the steps are {list(STEPS)}")
    return "_".join(step for step in STEPS if step in steps) or NO_STEPS


# Every step combination's name, none first: the {steps} wildcard of the retrained models' folders.
STEP_SETS = tuple(step_set_name(steps) for size in range(len(STEPS) + 1) for steps in combinations(STEPS, size))


def step_set(name: str) -> list[str]:
    """The steps of a combination name written by ``step_set_name``."""
    steps = [] if name == NO_STEPS else name.split("_")
    if step_set_name(steps) != name:
        raise ValueError(f"{name!r} is not a step combination name")
    return steps


def final_round(name: str, rounds: int) -> int:
    """The round whose model is final: the last pseudo-label round, or round 1 without pseudo-labels."""
    return rounds if "pseudo" in step_set(name) else 1


def retrained_model_name(steps: str) -> str:
    return f"retrain_{steps}"


def retrained_steps(name: str) -> str:
    """The step combination name of a retrained model's name (``retrained_model_name``'s inverse)."""
    return name.removeprefix(retrained_model_name(""))
