"""Final models' folders, and whose a results path is."""

import pytest

from vlmflow.recipe.final_models import final_model_dir, final_model_dirs, final_model_of, round_dir, variant_of


def test_each_final_model_has_one_folder_by_name():
    dirs = final_model_dirs("taught", ["average_folds", "retrain_none", "retrain_correction_pseudo"], rounds=2)
    assert dirs == {
        "average_folds": "results/taught/average_folds",
        "retrain_none": "results/taught/retrain/none/round1",  # no pseudo-labels: one round
        "retrain_correction_pseudo": "results/taught/retrain/correction_pseudo/round2",  # the last round
    }
    assert round_dir("taught", "pseudo", 1) == "results/taught/retrain/pseudo/round1"


def test_a_path_names_its_variant_and_final_model_whatever_the_order_of_a_list():
    for name, folder in final_model_dirs("b", ["average_folds", "retrain_pseudo"], rounds=3).items():
        assert final_model_of(f"{folder}/test_metrics.json") == ("b", name)
    assert variant_of("results/baseline_ocr/metrics.json") == "baseline_ocr"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: final_model_dir("b", "fold_ensemble", 1), "not a final model name"),
        (lambda: variant_of("logs/b/x.log"), "not a variant's results path"),
        (lambda: final_model_of("results/b/fold0/model"), "not inside a final model's folder"),
    ],
)
def test_what_is_not_a_final_model_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
