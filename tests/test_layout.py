"""The results layout (vlmflow.runtime.layout): every stage's patterns, and the final models' folders built on it."""

import re

import pytest

from vlmflow.recipe.final_models import FINAL_MODEL_WILDCARD, final_fit_of, final_model_dir, retrained_dir, round_dir
from vlmflow.recipe.steps import STEP_SETS
from vlmflow.runtime.layout import (
    FINAL_MODEL_DIR,
    FOLD_DIR,
    RECIPE_OUTPUTS,
    RETRAIN_OUTPUTS,
    ROUND_DIR,
    SCORE_OUTPUTS,
    STAGE_OUTPUTS,
    file_in,
    fill,
    wildcards,
)

# A value for every wildcard the layout uses.
VALUES = {
    "split": "train",
    "shard": 3,
    "test_shard": 1,
    "variant": "baseline",
    "fold": 2,
    "final_model": "average_folds",
    "steps": "pseudo",
    "seed": 42,
    "round": 2,
}
PATTERNS = [(stage, key, pattern) for stage, table in STAGE_OUTPUTS.items() for key, pattern in table.items()]


@pytest.mark.parametrize(("stage", "key", "pattern"), PATTERNS, ids=[f"{s}.{k}" for s, k, _ in PATTERNS])
def test_every_pattern_is_under_results_and_formats_with_its_wildcards(stage, key, pattern):
    assert pattern.startswith("results/")
    path = pattern.format(**{name: VALUES[name] for name in wildcards(pattern)})
    assert "{" not in path and "}" not in path
    assert "//" not in path


def test_no_two_outputs_share_a_path():
    patterns = [pattern for _, _, pattern in PATTERNS]
    assert sorted(set(patterns)) == sorted(patterns)


def test_fill_fills_the_named_wildcards_and_leaves_the_others_to_snakemake():
    assert fill(SCORE_OUTPUTS["test_shard"], test_shard=0) == "results/{variant}/fold{fold}/test_shards/0.parquet"
    assert fill(FOLD_DIR, fold=1, variant="taught") == "results/taught/fold1"
    assert fill(FOLD_DIR) == FOLD_DIR
    assert wildcards(SCORE_OUTPUTS["test_shard"]) == ["variant", "fold", "test_shard"]


def test_the_final_model_helpers_agree_with_the_layout():
    assert round_dir("taught", "pseudo", 42, 2) == ROUND_DIR.format(variant="taught", steps="pseudo", seed=42, round=2)
    assert final_model_dir("taught", "average_folds", 2) == FINAL_MODEL_DIR.format(
        variant="taught", final_model="average_folds"
    )
    assert retrained_dir("taught", "retrain_none") == "results/taught/retrain/none"
    # A round's files are score_final_model's outputs for that final model, and name its fit.
    final_model = "retrain/pseudo/seed42/round2"
    assert re.fullmatch(FINAL_MODEL_WILDCARD, final_model)
    assert RETRAIN_OUTPUTS["test"].format(variant="taught", steps="pseudo", seed=42, round=2) == RECIPE_OUTPUTS[
        "final_test"
    ].format(variant="taught", final_model=final_model)
    model = RETRAIN_OUTPUTS["model"].format(variant="taught", steps="pseudo", seed=42, round=2)
    assert final_fit_of(model) == ("taught", "retrain_pseudo", 42)


def test_the_final_model_wildcard_matches_every_final_model_folder_and_nothing_else():
    for steps in STEP_SETS:
        folder = round_dir("taught", steps, 7, 1)
        assert re.fullmatch(FINAL_MODEL_WILDCARD, folder.removeprefix("results/taught/"))
    assert re.fullmatch(FINAL_MODEL_WILDCARD, "average_folds")
    assert not re.fullmatch(FINAL_MODEL_WILDCARD, "retrain/teacher/seed7/round1")
    assert not re.fullmatch(FINAL_MODEL_WILDCARD, "fold0")
    assert STEP_SETS == ("none", "correction", "pseudo", "correction_pseudo")


def test_file_in_places_a_final_models_or_rounds_file_in_the_folder_final_models_names():
    averaged = final_model_dir("taught", "average_folds", 2)
    assert file_in(averaged, RECIPE_OUTPUTS["final_test"]) == "results/taught/average_folds/test_probs.parquet"
    fit = final_model_dir("taught", "retrain_correction_pseudo", 2, 7)
    assert (
        file_in(fit, RETRAIN_OUTPUTS["run"]) == "results/taught/retrain/correction_pseudo/seed7/round2/mlflow_run.json"
    )
    assert file_in(fit, RETRAIN_OUTPUTS["model"]) == RETRAIN_OUTPUTS["model"].format(
        variant="taught", steps="correction_pseudo", seed=7, round=2
    )
    assert (
        file_in(retrained_dir("taught", "retrain_none"), RECIPE_OUTPUTS["across_seeds"])
        == "results/taught/retrain/none/test_metrics_across_seeds.json"
    )
    with pytest.raises(ValueError, match="not a file of a final model"):
        file_in(fit, SCORE_OUTPUTS["test"])
