"""The GPU benchmark: its log arithmetic, and its whole path on the CPU with --smoke (build, ZeRO-2 and ZeRO-3
training, scoring, report)."""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "train_speed.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steady_rate_leaves_out_the_warm_up_steps_and_the_closing_summary():
    history = [
        {"step": 1, "loss": 7.0, "num_input_tokens_seen": 100, "train_runtime": 5.0},
        {"step": 2, "loss": 6.0, "num_input_tokens_seen": 220, "train_runtime": 5.5},
        {"step": 3, "loss": 5.0, "num_input_tokens_seen": 330, "train_runtime": 6.1},
        {"step": 3, "train_loss": 6.0, "num_input_tokens_seen": 330, "train_runtime": 6.2},
    ]
    rate = load_benchmark().steady_rate(history, warmup_steps=1)
    assert rate["steps_timed"] == 2 and rate["tokens"] == 230 and rate["seconds"] == pytest.approx(1.1)


def test_steady_rate_refuses_a_log_without_steps_past_the_warm_up():
    history = [{"step": 1, "loss": 7.0, "num_input_tokens_seen": 100, "train_runtime": 5.0}]
    with pytest.raises(ValueError, match="past step 1"):
        load_benchmark().steady_rate(history, warmup_steps=1)


def test_stage_specs_name_a_deepspeed_config_and_training_arguments():
    benchmark = load_benchmark()
    assert benchmark.parse_stage("z3,per_device_train_batch_size=8,disable_gradient_checkpointing=true") == (
        "z3",
        {"per_device_train_batch_size": 8, "disable_gradient_checkpointing": True},
    )
    assert benchmark.parse_stage("none") == ("none", {})
    with pytest.raises(argparse.ArgumentTypeError, match="z9.json"):
        benchmark.parse_stage("z9")


@pytest.mark.slow
def test_smoke_run_reports_throughput_mfu_and_scoring_time(tmp_path):
    report_path = tmp_path / "train_speed.json"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # torchrun and llamafactory-cli
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": path}
    command = [sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"), "--out", str(report_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert [run["deepspeed"] for run in report["runs"]] == ["z2", "z3"]
    for run in report["runs"]:
        assert run["steps_timed"] == 1 and run["tokens"] > 0
        assert run["tokens_per_second_per_gpu"] > 0
        assert math.isfinite(run["mfu"]) and run["mfu"] > 0
    assert report["parameters"] > 0 and report["matmul_tflops"] > 0
    assert report["scoring"]["labels"] == 25 and report["scoring"]["median_seconds_per_image"] > 0
    throughput = report["scoring"]["throughput"]
    assert [(row["backend"], row["batch_size"]) for row in throughput] == [("transformers", 1), ("transformers", 2)]
    assert all(row["images"] == 4 and row["images_per_second"] > 0 for row in throughput)
    assert "| transformers | 2 | 4 |" in result.stdout
    assert "| z3 |" in result.stdout  # the markdown table is printed
    for number, stage in enumerate(("z2", "z3"), start=1):  # each run went through the workflow's YAML
        yaml_text = (tmp_path / "work" / f"run{number}_{stage}" / "llamafactory.yaml").read_text()
        assert f"config/deepspeed/{stage}.json" in yaml_text
