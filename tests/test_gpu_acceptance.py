"""The prepared call for a GPU machine (benchmarks/gpu/acceptance.sh), rehearsed on the CPU with --smoke: every family
fine-tuned through llamafactory-cli under DeepSpeed, both ZeRO stages covered, the fine-tuned models scored by the
transformers backend and by vLLM (.venv-vllm's CPU build) with the two compared, and the machine check, each a row
of the table it writes under $OUT."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "acceptance.sh"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def load_acceptance():
    spec = importlib.util.spec_from_file_location("acceptance", SCRIPT.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["acceptance"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rows_of(table: str) -> dict[str, tuple[str, str]]:
    """The table's rows, check -> (result, detail)."""
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("check", "---"):
            rows[cells[0]] = (cells[1], cells[3])
    return rows


def test_a_failed_check_is_a_row_of_the_table_and_fails_the_call(tmp_path):
    acceptance = load_acceptance()
    table = acceptance.Acceptance(tmp_path, {"machine": "a test", "mode": "smoke"})
    table.add(acceptance.Check("fine-tune qwen2_vl under z2", "pass", 1.5, "1 step(s)"))
    assert not table.failed
    table.add(acceptance.timed("score qwen2_vl with vLLM, compared", lambda: 1 / 0))  # a check that raises fails
    assert table.failed  # main() exits 1
    rows = rows_of((tmp_path / "acceptance.md").read_text(encoding="utf-8"))
    assert rows == {
        "fine-tune qwen2_vl under z2": ("pass", "1 step(s)"),
        "score qwen2_vl with vLLM, compared": ("fail", "ZeroDivisionError: division by zero"),
    }
    assert [check["result"] for check in json.loads((tmp_path / "acceptance.json").read_text())["checks"]] == [
        "pass",
        "fail",
    ]


def test_the_gpu_plan_trains_every_family_under_both_stages_and_the_smoke_each_family_once():
    acceptance = load_acceptance()
    smoke = dict(acceptance.SMOKE_PLAN)
    assert sorted(smoke) == sorted(acceptance.FAMILIES) and set(smoke.values()) == set(acceptance.STAGES)
    assert acceptance.STAGES == ("z2", "z3") and acceptance.FAMILIES == FAMILIES
    gpu = acceptance.training_settings(smoke=False, steps=4, flash_attn="fa2")
    assert gpu["bf16"] is True and gpu["flash_attn"] == "fa2" and gpu["max_steps"] == 4
    cpu = acceptance.training_settings(smoke=True, steps=1, flash_attn="fa2")
    assert cpu["bf16"] is False and cpu["use_cpu"] is True and cpu["flash_attn"] == "auto"


@pytest.mark.slow
def test_smoke_rehearsal_covers_every_family_both_stages_both_backends_and_the_machine_check(
    tmp_path,
):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["bash", str(SCRIPT), "--smoke"], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]

    rows = rows_of((out / "acceptance.md").read_text(encoding="utf-8"))
    trained = {check: row for check, row in rows.items() if check.startswith("fine-tune ")}
    assert {check.split()[1] for check in trained} == set(FAMILIES)  # every family fine-tuned
    assert {check.split()[-1] for check in trained} == {"z2", "z3"}  # both ZeRO stages covered
    for check, (status, detail) in trained.items():
        assert status == "pass" and "1 step(s)" in detail and "float32 training" in detail, (check, detail)
    for family in FAMILIES:
        assert rows[f"build the tiny {family}"][0] == "pass"
        assert rows[f"score {family} (transformers, cpu)"][0] == "pass"
    status, detail = rows["score qwen2_vl with vLLM, compared"]
    assert status == "pass", detail
    # float32 on both backends: within the vLLM backend's own test's 1e-4 (they agree to about 1e-7).
    difference = float(detail.split("= ")[1].split()[0])
    assert difference < 1e-4
    assert rows["flash-attn"] == ("skipped", "smoke: flash-attn has no CPU build")
    status, detail = rows["machine check"]
    assert status == "pass" and "nvidia-smi is not on PATH" in detail  # it ran, and found no GPU here
    assert json.loads((out / "machine.json").read_text(encoding="utf-8"))["status"] == "problems"

    report = json.loads((out / "acceptance.json").read_text(encoding="utf-8"))
    assert [check["what"] for check in report["checks"]] == list(rows)  # the JSON holds the table's rows
    assert all(check["result"] in ("pass", "skipped") for check in report["checks"])
    assert sorted(path.name for path in (out / "logs").iterdir()) == [
        "qwen2_5_vl-z3.log",
        "qwen2_vl-z2.log",
        "qwen3_vl-z2.log",
    ]
    print(f"smoke end to end: {report['total_seconds']:.0f} s")
