"""The same config and seed give the same folds, prompts and CPU metrics, run after run."""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import KEY, KEY_ENV, run_snakemake


@pytest.mark.slow
def test_a_second_run_of_the_end_to_end_config_agrees_exactly_with_the_first(demo_run, demo_models, tmp_path):
    """The end-to-end run (tests/conftest.py demo_run) is the first run: the second makes what the OCR variant's
    out-of-fold metrics need (the demo data, the tiny model's pretraining, OCR, prompts, folds, both fold fine-tunes
    and their scoring) and must agree with it exactly. It starts from the tiny model the other runs copy in
    (conftest demo_models), not from rule build_tiny_model's job: that the build gives the same bytes again is
    tests/test_workflow.py's test_the_tests_prebuilt_demo_model_is_the_rules_build (demo_models' build against the
    end-to-end run's, byte for byte), and the job was on this run's critical path (before the pretraining)."""
    targets = ["results/folds/folds.csv", "results/baseline_ocr/prompts.parquet", "results/baseline_ocr/metrics.json"]
    second = tmp_path / "second"
    demo_models.into(second, copy.deepcopy(demo_run.config))
    run_snakemake(second, copy.deepcopy(demo_run.config), "--cores", "2", *targets, env={KEY_ENV: KEY})
    runs = [demo_run.workdir, second]

    assert (runs[0] / targets[0]).read_bytes() == (runs[1] / targets[0]).read_bytes()
    prompts = [pd.read_parquet(run / targets[1]) for run in runs]
    for table, run in zip(prompts, runs, strict=True):  # the same images, each under its own run's folder
        table["image_path"] = table["image_path"].map(lambda path, run=run: str(Path(path).relative_to(run)))
    pd.testing.assert_frame_equal(prompts[0], prompts[1])
    metrics = [json.loads((run / targets[2]).read_text()) for run in runs]
    assert metrics[0] == metrics[1] and metrics[0]["oof_n"] == 40
    probabilities = [pd.read_parquet(run / "results/baseline_ocr/oof_probs.parquet") for run in runs]
    pd.testing.assert_frame_equal(probabilities[0], probabilities[1], check_exact=False, rtol=0, atol=1e-6)
