"""A run on images whose text no one can read says so at its end and atop its summary."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageFilter

from conftest import run_snakemake, small_demo_config


@pytest.mark.slow
def test_a_run_on_unreadable_images_warns_that_ocr_read_nothing_and_nothing_was_learned(tmp_path):
    config = small_demo_config(
        tmp_path,
        variants=[{"name": "baseline_ocr", "ocr": True}],
        demo={"n_train": 24, "n_test": 6, "seed": 11, "image_width": 180, "image_height": 320},
        final={"strategy": "fold_ensemble", "ablation": [], "steps": []},
    )
    run_snakemake(tmp_path, config, "--cores", "2", "resources/demo/images")
    # Every glyph blurred past reading, as a missing font or a wrong image folder would leave them.
    images = sorted((tmp_path / "resources/demo/images").glob("*.jpg"))
    assert len(images) == 30
    for path in images:
        Image.open(path).filter(ImageFilter.GaussianBlur(12)).save(path)

    result = run_snakemake(tmp_path, config, "--cores", "2")
    stages = json.loads((tmp_path / "results/baseline_ocr/accounting/stages.json").read_text(encoding="utf-8"))
    ocr = next(stage for stage in stages["stages"] if stage["stage"] == "ocr")
    assert ocr["records_in"] == 30 and ocr["with_text"] < 15
    said = result.stdout + result.stderr
    assert "WARNING: variant baseline_ocr reads OCR text, but OCR found text in only" in said
    assert "WARNING: variant baseline_ocr learned nothing" in said  # the tiny random model, on blurred images
    summary = (tmp_path / "results/summary.md").read_text(encoding="utf-8")
    assert summary.startswith("## Warnings") and "learned nothing" in summary and "image paths" in summary
