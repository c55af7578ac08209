"""The GPU benchmark (benchmarks/gpu/train_speed.py): its run plan, its profile arithmetic, and its whole path on
the CPU with --smoke (build, R1..R6 through LLaMA-Factory under DeepSpeed, the profile, scoring, the table)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks" / "gpu"
SCRIPT = BENCHMARKS / "train_speed.py"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_run_adds_its_change_to_the_run_before_it():
    benchmark = load("train_speed")
    today = benchmark.resolved("R1", cuda=True)
    assert today["deepspeed"] == "z2" and today["timer"] is True
    assert today["settings"]["logging_nan_inf_filter"] is True  # the recipe before issue 19
    assert benchmark.resolved("R2", cuda=True)["timer"] is False
    last = benchmark.resolved("R8", cuda=True)
    assert last["deepspeed"] == "z3" and last["timer"] is False
    assert last["settings"] == {
        "logging_nan_inf_filter": False,
        "dataloader_persistent_workers": True,
        "disable_gradient_checkpointing": True,
        "enable_liger_kernel": True,
        "per_device_train_batch_size": 8,
    }
    # On the CPU, Liger's Triton kernels are left out of R5 and of every run built on it.
    assert benchmark.resolved("R6", cuda=False)["settings"]["enable_liger_kernel"] is False


def test_a_runs_deepspeed_config_is_the_shipped_one_with_its_timer_set(tmp_path):
    benchmark = load("train_speed")
    shipped = json.loads((REPO / "config" / "deepspeed" / "z3.json").read_text())
    assert shipped["timers"] == {"throughput": {"enabled": False}}  # off in what the workflow ships
    written = json.loads(benchmark.deepspeed_config("z3", True, tmp_path).read_text())
    assert written == shipped | {"timers": {"throughput": {"enabled": True}}}


def test_gpu_busy_time_is_the_union_of_kernel_intervals():
    timed_train = load("timed_train")
    # Two overlapping kernels (0-10, 5-12) and one apart (20-25): busy 12 + 5, not 10 + 7 + 5.
    assert timed_train.busy_microseconds([(20.0, 25.0), (0.0, 10.0), (5.0, 12.0)]) == 17.0
    assert timed_train.busy_microseconds([(0.0, 10.0), (2.0, 3.0)]) == 10.0  # one inside another


def test_a_steps_flops_are_the_mean_samples_times_the_samples_a_step_trains_on():
    benchmark = load("train_speed")
    flops = sys.modules["model_flops"]
    shape = flops.MODEL_SHAPES["qwen2-vl-2b"]
    timing = {"dataset": {"lengths": [100, 300], "visual_tokens": [50, 50]}, "samples_per_step": 4}
    frozen = {"freeze_vision_tower": True, "freeze_multi_modal_projector": True}
    one, other = (
        sum(flops.sample_training_flops(shape, length, 200, vision_trained=False, projector_trained=False).values())
        for length in (100, 300)
    )
    assert benchmark.step_flops(timing, shape, frozen) == pytest.approx(4 * (one + other) / 2)


@pytest.mark.slow
def test_smoke_run_prints_the_table_of_every_run_and_the_profile(tmp_path):
    report_path = tmp_path / "train_speed.json"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # torchrun
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": path}
    command = [sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"), "--out", str(report_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    report = json.loads(report_path.read_text(encoding="utf-8"))
    runs = {run["run"]: run for run in report["runs"]}
    assert list(runs) == ["R1", "R2", "R5", "R6"]
    assert runs["R5"]["skipped"] == "skipped: needs CUDA"
    for name in ("R1", "R2", "R6"):
        run = runs[name]
        assert "failed" not in run, run
        assert run["steps_timed"] == 2 and run["seconds_per_step"] > 0 and run["tokens_per_step"] > 0
        assert math.isfinite(run["mfu_measured_matmul"]) and run["mfu_measured_matmul"] > 0
        assert run["mfu_spec"] is None  # a CPU has no spec peak in the table
        assert run["visual_tokens_per_sample"] > 0  # the vision tower's patches are counted
        assert f"| {name} | {run['change']} | z2 | 2 x 2 |" in result.stdout  # printed as the run ended
    assert report["samples"] == 32
    profile = runs["R6"]["profile"]
    assert profile["top_host_operations"] and profile["gpu_busy_ms_per_step"] is None
    assert "| host operation | calls/step | self CPU (ms/step) |" in result.stdout
    assert report["scoring"]["labels"] == 25 and report["scoring"]["median_seconds_per_image"] > 0
    assert report_path.with_suffix(".md").read_text().count("| R") >= 4

    work = tmp_path / "work"

    def timer_of(run: str) -> bool:
        deepspeed = yaml.safe_load((work / run / "llamafactory.yaml").read_text())["deepspeed"]
        return json.loads(Path(deepspeed).read_text())["timers"]["throughput"]["enabled"]

    timers = {name: timer_of(name) for name in ("R1", "R2", "R6")}
    assert timers == {"R1": True, "R2": False, "R6": False}
    profiled = yaml.safe_load((work / "R6" / "llamafactory.yaml").read_text())
    assert profiled["logging_nan_inf_filter"] is False and profiled["disable_gradient_checkpointing"] is True
    assert profiled["dataloader_persistent_workers"] is True and profiled["enable_liger_kernel"] is False
