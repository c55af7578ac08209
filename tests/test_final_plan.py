"""The recipe's final-model policy (vlmflow.recipe.final_plan): which final models each variant fits, with which
seeds, and which one submits."""

import pytest

from vlmflow.recipe.final_plan import FinalPlan

VARIANTS = ["baseline", "baseline_ocr"]


def final(**settings) -> dict:
    """config final: the demo's, changed by ``settings``."""
    return {
        "strategy": "retrain",
        "steps": ["correction", "pseudo"],
        "ablation": [[], ["correction", "pseudo"]],
        "ablation_variants": ["baseline_ocr"],
        "other_variants": "fold_ensemble",
        "seeds": [42, 43],
        **settings,
    }


def test_the_ablation_variant_fits_every_combination_with_every_seed_and_the_other_submits_its_fold_ensemble():
    plan = FinalPlan.of(final(), VARIANTS, train_seed=7)
    assert plan.retrained_models == ["retrain_none", "retrain_correction_pseudo"]
    assert plan.final_models("baseline_ocr") == ["average_folds", "retrain_none", "retrain_correction_pseudo"]
    assert (plan.fit_seeds("baseline_ocr"), plan.submitted_model("baseline_ocr")) == (
        [42, 43],
        "retrain_correction_pseudo",
    )
    assert plan.final_models("baseline") == ["average_folds"] and plan.submitted_model("baseline") == "fold_ensemble"
    assert plan.fit_seeds("baseline") == [42]


def test_other_variants_retrain_the_submissions_combination_once():
    plan = FinalPlan.of(final(other_variants="retrain", ablation=[[]]), VARIANTS, train_seed=7)
    assert plan.retrained == ["none", "correction_pseudo"]  # the ablation's, then the submission's
    assert plan.retrained_models_of("baseline") == ["retrain_correction_pseudo"]
    assert plan.submitted_model("baseline") == "retrain_correction_pseudo" and plan.fit_seeds("baseline") == [42]


@pytest.mark.parametrize("strategy", ["average_folds", "fold_ensemble"])
def test_a_strategy_without_retraining_fits_only_the_ablation(strategy):
    plan = FinalPlan.of(final(strategy=strategy, other_variants="retrain"), VARIANTS, train_seed=7)
    assert plan.retrained == ["none", "correction_pseudo"] and plan.submitted_model("baseline_ocr") == strategy
    assert plan.retrained_models_of("baseline") == []  # nothing to retrain for the submission


def test_no_seeds_means_one_fit_seeded_by_train_seed_and_null_ablation_variants_means_all():
    plan = FinalPlan.of(final(seeds=None, ablation_variants=None), VARIANTS, train_seed=7)
    assert plan.seeds == [7] and plan.first_seed == 7 and plan.ablation_variants == VARIANTS
    with pytest.raises(ValueError, match="not variants"):
        FinalPlan.of(final(ablation_variants=["typo"]), VARIANTS, train_seed=7)
