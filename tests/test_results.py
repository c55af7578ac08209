import json

import pytest

from vlmflow.evaluation.results import (
    by_fit,
    by_model,
    by_variant,
    by_variant_and_model,
    fit_paths,
    read_json,
    read_optional_json,
)


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A few result files under results/, as the workflow lays them out; paths relative, as Snakemake gives them."""
    monkeypatch.chdir(tmp_path)
    files = {
        "results/baseline/metrics.json": {"oof_weighted_f1": 0.5},
        "results/baseline_ocr/metrics.json": {"oof_weighted_f1": 0.7},
        "results/baseline/average_folds/test_metrics.json": {"test_weighted_f1": 0.6},
        "results/baseline/retrain/none/test_metrics.json": {"test_weighted_f1": 0.65},
        "results/baseline/retrain/none/seed1/round0/training_set.json": {"seed": 1},
        "results/baseline/retrain/none/seed2/round0/training_set.json": {"seed": 2},
    }
    for path, contents in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps(contents), encoding="utf-8")
    return list(files)


def test_files_are_keyed_by_the_variant_their_path_names(results):
    assert by_variant(results[:2]) == {"baseline": {"oof_weighted_f1": 0.5}, "baseline_ocr": {"oof_weighted_f1": 0.7}}
    assert read_json(results[0]) == {"oof_weighted_f1": 0.5}


def test_final_models_are_keyed_by_variant_and_model_with_every_variant_present(results):
    grouped = by_variant_and_model(results[2:4], ["baseline", "baseline_ocr"])
    assert grouped == {
        "baseline": {"average_folds": {"test_weighted_f1": 0.6}, "retrain_none": {"test_weighted_f1": 0.65}},
        "baseline_ocr": {},
    }
    assert by_variant_and_model(results[4:], ["baseline"], seed=2) == {"baseline": {"retrain_none": {"seed": 2}}}
    assert by_variant_and_model([], ["baseline"]) == {"baseline": {}}


def test_one_variants_files_are_keyed_by_model_or_by_fit(results):
    assert by_model(results[2:4]) == {
        "average_folds": {"test_weighted_f1": 0.6},
        "retrain_none": {"test_weighted_f1": 0.65},
    }
    assert fit_paths(results[4:]) == {("retrain_none", 1): results[4], ("retrain_none", 2): results[5]}
    assert by_fit(results[4:]) == {("retrain_none", 1): {"seed": 1}, ("retrain_none", 2): {"seed": 2}}


def test_files_of_several_variants_are_refused_where_one_variants_are_expected(results):
    with pytest.raises(ValueError, match="files of one variant expected"):
        by_model(results[:2])
    with pytest.raises(ValueError, match="not a variant's results path"):
        by_variant(["elsewhere/metrics.json"])


def test_an_optional_input_reads_as_its_one_file_or_none(results):
    assert read_optional_json([]) is None
    assert read_optional_json(results[:1]) == {"oof_weighted_f1": 0.5}
    with pytest.raises(ValueError, match="at most one file"):
        read_optional_json(results[:2])
