"""The same config and seed give the same folds, prompts and CPU metrics, run after run."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_snakemake, small_demo_config


@pytest.mark.slow
def test_two_runs_of_the_same_config_agree_exactly(tmp_path):
    targets = ["results/folds/folds.csv", "results/baseline_ocr/prompts.parquet", "results/baseline_ocr/metrics.json"]
    runs = []
    for name in ("first", "second"):
        workdir = tmp_path / name
        config = small_demo_config(workdir, variants=[{"name": "baseline_ocr", "ocr": True}])
        run_snakemake(workdir, config, "--cores", "2", *targets)
        runs.append(workdir)
    first, second = runs

    assert (first / targets[0]).read_bytes() == (second / targets[0]).read_bytes()
    prompts = [pd.read_parquet(run / targets[1]) for run in runs]
    for table, run in zip(prompts, runs, strict=True):  # the same images, each under its own run's folder
        table["image_path"] = table["image_path"].map(lambda path, run=run: str(Path(path).relative_to(run)))
    pd.testing.assert_frame_equal(prompts[0], prompts[1])
    metrics = [json.loads((run / targets[2]).read_text()) for run in runs]
    assert metrics[0] == metrics[1] and metrics[0]["oof_n"] == 40
    probabilities = [pd.read_parquet(run / "results/baseline_ocr/oof_probs.parquet") for run in runs]
    pd.testing.assert_frame_equal(probabilities[0], probabilities[1], check_exact=False, rtol=0, atol=1e-6)
