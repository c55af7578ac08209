"""The report's plots and pages, on tiny fixtures; the browser helpers that need no browser."""

import base64
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from PIL import Image

from vlmflow.evaluation.report import (
    confidence_ranges,
    inline_images,
    plot_loss_curves,
    plot_pseudo_labels,
    pseudo_label_counts,
    read_trainer_log,
    table_page,
    yaml_page,
)

from helpers.local_server import free_port, stop_process_group, wait_for_http


def test_pseudo_labels_are_counted_per_class_and_confidence_range_every_class_listed(tmp_path):
    pseudo = pd.DataFrame({"label": ["退款页面", "退款页面", "支付页面"], "confidence": [0.41, 0.99, 1.0]})
    edges = confidence_ranges(0.4, 3)
    assert edges == pytest.approx([0.4, 0.6, 0.8, 1.0])
    counts = pseudo_label_counts(pseudo, ["支付页面", "退款页面", "换货页面"], edges)
    assert list(counts.columns) == ["0.40–0.60", "0.60–0.80", "0.80–1.00"]
    assert counts.loc["退款页面"].tolist() == [1, 0, 1] and counts.loc["支付页面"].tolist() == [0, 0, 1]
    assert counts.loc["换货页面"].sum() == 0  # a class without pseudo-labels still has its row
    selection = {"kept": 3, "candidates": 5, "rejected_by_tau": 2, "tau": 0.4}
    selection |= {"rejected_by_agreement": 0, "min_agreeing_folds": 3, "dropped_by_cap": 0}
    plot_pseudo_labels(counts, selection, tmp_path / "pseudo.png", "demo")
    assert Image.open(tmp_path / "pseudo.png").size[0] > 500


def test_no_pseudo_labels_give_a_table_of_zeros():
    empty = pd.DataFrame({"label": [], "confidence": []})
    counts = pseudo_label_counts(empty, ["支付页面", "退款页面"], confidence_ranges(0.9))
    assert counts.shape == (2, 4) and counts.to_numpy().sum() == 0


def test_loss_curves_are_read_from_trainer_logs_and_drawn(tmp_path):
    steps = [{"current_steps": 1, "loss": 2.0}, {"current_steps": 2, "eval_loss": 1.5}, {"current_steps": 2}]
    (tmp_path / "trainer_log.jsonl").write_text("\n".join(json.dumps(step) for step in steps) + "\n")
    log = read_trainer_log(tmp_path / "trainer_log.jsonl")
    assert log["loss"].count() == 1 and log["eval_loss"].count() == 1
    plot_loss_curves({"fold 0": log, "fold 1": log}, tmp_path / "loss.png", "demo")
    assert Image.open(tmp_path / "loss.png").size[0] > 500


def test_review_images_are_inlined_and_others_left_alone(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "results").mkdir()
    Image.new("RGB", (4, 4), "red").save(tmp_path / "images" / "a&b.png")
    page = '<img alt="x" src="../images/a&amp;b.png"><img src="missing.jpg"><img src="data:image/png;base64,AA">'
    inlined = inline_images(page, tmp_path / "results")  # the review page's src is HTML-escaped, relative
    data = base64.b64encode((tmp_path / "images" / "a&b.png").read_bytes()).decode()
    assert f'<img alt="x" src="data:image/png;base64,{data}">' in inlined
    assert 'src="missing.jpg"' in inlined and 'src="data:image/png;base64,AA"' in inlined


def test_tables_and_settings_become_standalone_pages():
    table = table_page(pd.DataFrame({"variant": ["<b>x</b>"], "out-of-fold weighted F1": [0.71234]}), "Summary")
    assert "<h1>Summary</h1>" in table and "0.712" in table and "&lt;b&gt;x&lt;/b&gt;" in table
    settings = yaml_page({"pseudo": {"tau": 0.9}, "labels": "标签"}, "Run configuration")
    assert "tau" in settings and "0.9" in settings and "标签" in settings and "<style>" in settings


def test_waiting_for_a_server_stops_when_its_process_has_died():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/health", timeout=30, process=dead)
    with pytest.raises(TimeoutError):
        wait_for_http(f"http://127.0.0.1:{free_port()}/health", timeout=1)


def test_a_process_group_is_stopped_with_its_children():
    group = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    child = int(group.stdout.readline())
    stop_process_group(group, timeout=10)
    assert group.returncode is not None
    with pytest.raises(ProcessLookupError):  # the child went with the group
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)
