"""Which final models each variant fits, with which seeds, and which one its submission comes from: the recipe's
policy over config ``final`` (strategy, steps, ablation, ablation_variants, other_variants, seeds).

The final models besides the fold ensemble are the weight-averaged fold model and the models retrained on step
combinations (none, correction, pseudo, correction_pseudo): those the ablation compares, plus the submission's when
``final.strategy`` is retrain. The variants ``final.ablation_variants`` names fit all of them with every seed of
``final.seeds``; every other variant retrains only the submission's combination, with the first seed, or nothing
when ``final.other_variants`` is fold_ensemble (its fold ensemble submits). Where they live:
``vlmflow.recipe.final_models``.

Standard library only: common.smk builds one ``FinalPlan`` when Snakemake starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmflow.recipe.final_models import ablation_variants, training_seeds
from vlmflow.recipe.steps import AVERAGE_FOLDS, FOLD_ENSEMBLE, retrained_model_name, step_set_name


@dataclass(frozen=True)
class FinalPlan:
    retrained: list[str]  # step-combination names retrained: the ablation's, then the submission's
    submitted_steps: str  # the step combination final.steps names
    submitted: str  # what final.strategy submits: a retrained model's name, average_folds or fold_ensemble
    seeds: list[int]  # every retrained combination's fits, one per seed; the first seed's submits
    ablation_variants: list[str]
    other_variants: str  # what the other variants submit: retrain or fold_ensemble

    @classmethod
    def of(cls, final: dict, variants: list[str], train_seed: int) -> FinalPlan:
        """The plan of config ``final`` for ``variants``; ``train_seed`` seeds the one fit when final.seeds is
        null."""
        ablation = [step_set_name(steps) for steps in final["ablation"]]
        submitted_steps = step_set_name(final["steps"])
        retrain = final["strategy"] == "retrain"
        return cls(
            retrained=list(dict.fromkeys(ablation + ([submitted_steps] if retrain else []))),
            submitted_steps=submitted_steps,
            submitted=retrained_model_name(submitted_steps) if retrain else final["strategy"],
            seeds=training_seeds(final["seeds"], train_seed),
            ablation_variants=ablation_variants(final["ablation_variants"], variants),
            other_variants=final["other_variants"],
        )

    @property
    def retrained_models(self) -> list[str]:
        """The retrained models by name (``retrain_<steps>``)."""
        return [retrained_model_name(steps) for steps in self.retrained]

    @property
    def first_seed(self) -> int:
        return self.seeds[0]

    def submitted_model(self, variant: str) -> str:
        """The final model a variant's submission comes from: final.strategy's, or the fold ensemble for a variant
        outside final.ablation_variants when final.other_variants says so."""
        if variant not in self.ablation_variants and self.other_variants == FOLD_ENSEMBLE:
            return FOLD_ENSEMBLE
        return self.submitted

    def retrained_models_of(self, variant: str) -> list[str]:
        """A variant's retrained models: the ablation's and the submission's, the submission's alone, or none."""
        if variant in self.ablation_variants:
            return self.retrained_models
        submitted = self.submitted_model(variant)
        return [submitted] if submitted == retrained_model_name(self.submitted_steps) else []

    def final_models(self, variant: str) -> list[str]:
        """A variant's final models besides the fold ensemble."""
        return [AVERAGE_FOLDS, *self.retrained_models_of(variant)]

    def fit_seeds(self, variant: str) -> list[int]:
        """The seeds each of a variant's retrained models is fitted with."""
        return self.seeds if variant in self.ablation_variants else [self.first_seed]
