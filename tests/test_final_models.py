"""Final models' folders (one per seed for a retrained model), and whose a results path is."""

import pytest

from vlmflow.recipe.final_models import (
    ablation_variants,
    final_fit_of,
    final_model_dir,
    final_model_dirs,
    final_model_of,
    retrained_dir,
    round_dir,
    training_seeds,
    variant_of,
)


def test_each_final_fit_has_one_folder_by_name_and_seed():
    dirs = final_model_dirs("taught", ["average_folds", "retrain_none", "retrain_correction_pseudo"], 2, [42, 7])
    assert dirs == {
        ("average_folds", None): "results/taught/average_folds",  # no training seed: one model
        ("retrain_none", 42): "results/taught/retrain/none/seed42/round1",  # no pseudo-labels: one round
        ("retrain_none", 7): "results/taught/retrain/none/seed7/round1",
        ("retrain_correction_pseudo", 42): "results/taught/retrain/correction_pseudo/seed42/round2",  # the last
        ("retrain_correction_pseudo", 7): "results/taught/retrain/correction_pseudo/seed7/round2",
    }
    assert round_dir("taught", "pseudo", 3, 1) == "results/taught/retrain/pseudo/seed3/round1"
    assert retrained_dir("taught", "retrain_pseudo") == "results/taught/retrain/pseudo"


def test_a_path_names_its_variant_final_model_and_seed_whatever_the_order_of_a_list():
    for (name, seed), folder in final_model_dirs("b", ["average_folds", "retrain_pseudo"], 3, [5, 6]).items():
        assert final_fit_of(f"{folder}/test_metrics.json") == ("b", name, seed)
        assert final_fit_of(f"{folder}/model") == ("b", name, seed)
        assert final_model_of(f"{folder}/test_metrics.json") == ("b", name)
    # A round before the last, and a file of the retrained model across its seeds.
    assert final_fit_of("results/b/retrain/pseudo/seed6/round1/pseudo_labels.csv") == ("b", "retrain_pseudo", 6)
    assert final_fit_of("results/b/retrain/none/test_metrics_across_seeds.json") == ("b", "retrain_none", None)
    assert final_fit_of("results/b/retrain/none/seed42") == ("b", "retrain_none", 42)
    assert final_model_of("results/b/retrain/none/test_metrics_across_seeds.json") == ("b", "retrain_none")
    assert variant_of("results/baseline_ocr/metrics.json") == "baseline_ocr"


def test_the_seeds_are_final_seeds_or_else_train_seed():
    assert training_seeds([42, 43], train_seed=7) == [42, 43]
    assert training_seeds(None, train_seed=7) == [7]  # the schema's default: one fit, as before seeds


def test_the_ablation_variants_are_those_named_or_else_every_variant():
    assert ablation_variants(["b"], ["a", "b"]) == ["b"]
    assert ablation_variants(None, ["a", "b"]) == ["a", "b"]  # the schema's default
    assert ablation_variants([], ["a", "b"]) == []
    with pytest.raises(ValueError, match=r"names \['c'\], which are not variants .*or null for every variant"):
        ablation_variants(["a", "c"], ["a", "b"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: final_model_dir("b", "fold_ensemble", 1), "not a final model name"),
        (lambda: final_model_dir("b", "retrain_none", 1), "once per seed"),
        (lambda: retrained_dir("b", "average_folds"), "not a retrained model name"),
        (lambda: variant_of("logs/b/x.log"), "not a variant's results path"),
        (lambda: final_model_of("results/b/fold0/model"), "not inside a final model's folder"),
    ],
)
def test_what_is_not_a_final_model_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
