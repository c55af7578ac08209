"""One small run, read three ways: images whose text no one can read (the run says so at its end and atop its
summary), `train.keep_fold_models: false` (each fold's model folder goes once everything that reads it has run),
and host memory for one fine-tune only (`--resources mem_mb`: the folds run one after the other). One run rather
than three: a workflow run is minutes on 2 cores, and no setting touches the others."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image, ImageFilter

from vlmflow.runtime.memory import base_model_size, rule_memory
from vlmflow.runtime.plan import load_config

from conftest import run_snakemake, small_demo_config


@pytest.fixture(scope="module")
def unreadable_run(tmp_path_factory, demo_models) -> tuple:
    """The OCR variant on blurred images, fold models not kept: every target plus the averaged fold model's scores
    (the fold ensemble submits, so nothing else reads the averaged model)."""
    workdir = tmp_path_factory.mktemp("unreadable")
    config = small_demo_config(
        workdir,
        variants=[{"name": "baseline_ocr", "ocr": True}],
        demo={"n_train": 24, "n_test": 6, "seed": 11, "image_width": 180, "image_height": 320},
        final={"strategy": "fold_ensemble", "ablation": [], "steps": []},
        train={"keep_fold_models": False},
        # One test shard: score_fold scores the test records with the held-out ones (merge_test_shards still runs).
        # Sharded scoring is the end-to-end run's, checked there against unsharded scoring (tests/test_workflow.py,
        # test_sharded_test_scores_equal_unsharded_scoring); here the memory limit below runs the scoring jobs one at
        # a time, so two shard jobs were two more model loads in a row.
        score={"shards": 1},
    )
    demo_models.into(workdir, config)
    run_snakemake(workdir, config, "--cores", "2", "resources/demo/images")
    # Every glyph blurred past reading, as a missing font or a wrong image folder would leave them.
    images = sorted((workdir / "resources/demo/images").glob("*.jpg"))
    assert len(images) == 30
    for path in images:
        Image.open(path).filter(ImageFilter.GaussianBlur(12)).save(path)
    averaged = "results/baseline_ocr/average_folds/test_probs.parquet"
    # Host memory for one fold fine-tune, not two (the rules' mem_mb, vlmflow.runtime.memory: about 3,000 MB a tiny
    # fold): the two folds, which --cores 2 would otherwise train at once, must run one after the other. Jobs that
    # declare no memory (OCR, prompts, splits) still run beside a fold.
    resolved = load_config([], config)
    fold_mb = rule_memory(resolved, base_model_size(resolved), labels=25)["fine_tune"].host_mb
    machine = f"mem_mb={2 * fold_mb - 1}"
    result = run_snakemake(workdir, config, "--cores", "2", "all", averaged, "--resources", machine)
    return workdir, result, fold_mb


@pytest.mark.slow
def test_a_run_on_unreadable_images_warns_that_ocr_read_nothing_and_nothing_was_learned(unreadable_run):
    workdir, result, _ = unreadable_run
    stages = json.loads((workdir / "results/baseline_ocr/accounting/stages.json").read_text(encoding="utf-8"))
    ocr = next(stage for stage in stages["stages"] if stage["stage"] == "ocr")
    assert ocr["records_in"] == 30 and ocr["with_text"] < 15
    said = result.stdout + result.stderr
    assert "WARNING: variant baseline_ocr reads OCR text, but OCR found text in only" in said
    assert "WARNING: variant baseline_ocr learned nothing" in said  # the tiny random model, on blurred images
    summary = (workdir / "results/summary.md").read_text(encoding="utf-8")
    assert summary.startswith("## Warnings") and "learned nothing" in summary and "image paths" in summary


@pytest.mark.slow
def test_fold_models_are_removed_once_scored_and_averaged(unreadable_run):
    workdir, result, _ = unreadable_run
    for fold in (0, 1):
        folder = workdir / f"results/baseline_ocr/fold{fold}"
        assert not (folder / "model").exists(), f"fold {fold}'s model is left on disk"
        assert len(pd.read_parquet(folder / "test_probs.parquet")) == 6  # its scores stay
        assert len(pd.read_parquet(folder / "oof_probs.parquet")) > 0
        assert (folder / "llamafactory.yaml").is_file()
    assert (workdir / "results/baseline_ocr/average_folds/model/model.safetensors").is_file()
    assert "Removing temporary output results/baseline_ocr/fold0/model" in result.stdout + result.stderr


@pytest.mark.slow
def test_two_fine_tunes_never_overlap_when_the_memory_holds_one(unreadable_run):
    workdir, result, fold_mb = unreadable_run
    assert f"mem_mb={fold_mb}" in result.stdout + result.stderr  # the fold jobs declared it
    spans = []
    for fold in (0, 1):
        benchmark = workdir / f"benchmarks/train/baseline_ocr/fold{fold}.tsv"
        seconds = pd.read_csv(benchmark, sep="\t")["s"].iloc[0]
        end = benchmark.stat().st_mtime  # written as the job ends
        spans.append((end - seconds, end))
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert second_start >= first_end - 1.0, f"the folds overlapped: {spans}"
