"""train.keep_fold_models: false removes each fold's model folder once everything that reads it has run."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_snakemake, small_demo_config


@pytest.mark.slow
def test_fold_models_are_removed_once_scored_and_averaged(tmp_path):
    config = small_demo_config(
        tmp_path,
        variants=[{"name": "baseline"}],
        demo={"n_train": 24, "n_test": 6, "seed": 7, "image_width": 180, "image_height": 320},
        train={"keep_fold_models": False},
    )
    targets = ["results/baseline/average_folds/test_probs.parquet", "results/baseline/metrics.json"]
    result = run_snakemake(tmp_path, config, "--cores", "2", *targets)
    for fold in (0, 1):
        folder = tmp_path / f"results/baseline/fold{fold}"
        assert not (folder / "model").exists(), f"fold {fold}'s model is left on disk"
        assert len(pd.read_parquet(folder / "test_probs.parquet")) == 6  # its scores stay
        assert len(pd.read_parquet(folder / "oof_probs.parquet")) > 0
        assert (folder / "llamafactory.yaml").is_file()
    assert (tmp_path / "results/baseline/average_folds/model/model.safetensors").is_file()
    assert "Removing temporary output results/baseline/fold0/model" in result.stdout + result.stderr
