"""The machine check before the first GPU job (issue 28, item 2): each problem it names, read from its message.

The machines are recorded: a fake ``nvidia-smi`` first on PATH prints what a 4 x A30 (24 GB), an 8 x H100 (80 GB)
and an old-driver machine print; flash-attn, DeepSpeed's op builder and the vLLM venv are stood in for. The needs
are written here in ``memory.job_needs``'s form, so the check is tested apart from the memory model.
"""

import json
import shutil
import sys
import types

import pytest
from mlflow.tracking import MlflowClient

from vlmflow.runtime import machine
from vlmflow.runtime.machine import (
    Gpu,
    MachineFacts,
    MachineRequest,
    check_machine,
    examine,
    host_memory_mb,
    log_report_to_mlflow,
    offloads_optimizer,
    probe_cpu_adam,
    probe_gpus,
    probe_machine,
    probe_vllm,
)

from conftest import BIN, REPO, run_snakemake, small_demo_config
from helpers.nvidia_smi import A30_MACHINE, H100_MACHINE, OLD_DRIVER_MACHINE, write_fake_nvidia_smi

GB = 1000  # MB, as vlmflow.runtime.memory counts (10**6 bytes)
HOST_120_GB = 120 * GB
CUDA_12 = ("2.5.1+cu124", "12.4")  # a torch built for CUDA 12, which the A30 machine's 535 driver runs

# One 7B fine-tune with ZeRO-3 offload on one GPU, and the ways of training it, smallest card first.
FULL_Z3_OFFLOAD = {"method": "full", "deepspeed": "z3_offload", "gpus": 1, "gpu_mb": 20 * GB, "host_mb": 110 * GB}
LORA_NONE = {"method": "lora", "deepspeed": "none", "gpus": 1, "gpu_mb": 19 * GB, "host_mb": 30 * GB}
FULL_Z3_ACROSS_4 = {"method": "full", "deepspeed": "z3", "gpus": 4, "gpu_mb": 40 * GB, "host_mb": 60 * GB}
FULL_Z2 = {"method": "full", "deepspeed": "z2", "gpus": 1, "gpu_mb": 140 * GB, "host_mb": 40 * GB}
SCORING = {"gpus": 1, "gpu_mb": 18 * GB, "host_mb": 20 * GB}


def needs_of(fine_tune: dict, scoring: dict = SCORING) -> dict:
    """Needs in job_needs' form: the configured fine-tune, one scoring job and every alternative."""
    return {
        "fine_tune": fine_tune,
        "scoring": scoring,
        "alternatives": [LORA_NONE, FULL_Z3_OFFLOAD, FULL_Z3_ACROSS_4, FULL_Z2],
    }


def request_of(**settings) -> MachineRequest:
    return MachineRequest(**{"gpus_per_run": 1, "deepspeed": "z3_offload", **settings})


def the_problem(recorded_machine, request, fine_tune: dict, recorded: str = A30_MACHINE) -> str:
    """The one problem the check finds with ``fine_tune`` on the recorded machine, as ``request`` asks."""
    (problem,) = check_machine(needs_of(fine_tune), recorded_machine(recorded, request), request).problems
    return problem


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """Put an nvidia-smi printing ``recorded`` (and its ``-L`` listing) first on PATH; return its folder."""
    monkeypatch.delenv("VLMFLOW_GPU_POOL", raising=False)  # the pool is every card nvidia-smi lists
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(recorded: str) -> str:
        folder = write_fake_nvidia_smi(tmp_path / "fake-bin", recorded)
        monkeypatch.setenv("PATH", f"{folder}:{BIN}:/usr/bin:/bin")
        return str(folder)

    return install


@pytest.fixture
def recorded_machine(fake_nvidia_smi, monkeypatch):
    """The facts probe_machine gathers on a recorded machine, with 120 GB of host memory and ``torch_cuda``."""

    def facts(recorded: str, request: MachineRequest, torch=CUDA_12) -> MachineFacts:
        fake_nvidia_smi(recorded)
        monkeypatch.setattr(machine, "host_memory_mb", lambda: HOST_120_GB)
        monkeypatch.setattr(machine, "probe_torch", lambda: torch)
        return probe_machine(request)

    return facts


def fake_deepspeed(monkeypatch, *, compatible=True, error=None):
    """Stand in for DeepSpeed's accelerator and its CPUAdamBuilder, whose load raises ``error``."""

    class Builder:
        def is_compatible(self):
            return compatible

        def load(self, verbose=True):
            if error is not None:
                raise error

    accelerator = types.SimpleNamespace(create_op_builder=lambda name: Builder(), device_name=lambda: "cuda")
    module = types.ModuleType("deepspeed.accelerator")
    module.get_accelerator = lambda: accelerator
    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    monkeypatch.setitem(sys.modules, "deepspeed.accelerator", module)


def fake_python(tmp_path, body: str) -> str:
    """A stand-in for the vLLM venv's python, running ``body`` as a shell script."""
    python = tmp_path / "vllm-venv" / "python"
    python.parent.mkdir(exist_ok=True)
    python.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    python.chmod(0o755)
    return str(python)


def test_the_probe_reads_the_recorded_machines(fake_nvidia_smi):
    fake_nvidia_smi(A30_MACHINE)
    driver, gpus, error = probe_gpus()
    assert (driver, error) == ("535.104.05", None)
    assert gpus == (Gpu("NVIDIA A30", 25769, 25228),) * 4  # nvidia-smi's MiB in MB
    fake_nvidia_smi(H100_MACHINE)
    driver, gpus, error = probe_gpus()
    assert driver == "580.95.05" and len(gpus) == 8 and gpus[0].memory_mb == 85520


def test_a_machine_that_fits_passes_and_lists_what_else_fits(recorded_machine):
    request = request_of()
    facts = recorded_machine(A30_MACHINE, request)
    assert facts.pool == ("0", "1", "2", "3") and facts.host_mb == HOST_120_GB
    report = check_machine(needs_of(FULL_Z3_OFFLOAD), facts, request)
    assert report.status == "ok" and report.problems == []
    assert report.fits == [LORA_NONE, FULL_Z3_OFFLOAD]  # z3 across 4 needs 40 GB cards, z2 a 140 GB one
    assert json.loads(json.dumps(report.as_json()))["facts"]["gpus"][0]["name"] == "NVIDIA A30"


def test_an_old_driver_names_the_driver_torchs_cuda_needs(recorded_machine):
    request = request_of(deepspeed="z3")
    report = check_machine(needs_of(FULL_Z3_OFFLOAD), recorded_machine(OLD_DRIVER_MACHINE, request), request)
    (problem,) = report.problems
    assert "NVIDIA driver 470.199.02 is too old for torch 2.5.1+cu124, built with CUDA 12.4" in problem
    assert "525.60.13 or newer" in problem and "update the driver to 525 or newer" in problem
    # The pinned torch (requirements/torch.txt, CUDA 13.0) on the A30 machine's 535 driver: it needs 580.
    report = check_machine(
        needs_of(FULL_Z3_OFFLOAD), recorded_machine(A30_MACHINE, request, torch=("2.11.0+cu130", "13.0")), request
    )
    (problem,) = report.problems
    assert "CUDA 13.x needs driver 580.65.06 or newer" in problem


def test_fewer_gpus_than_one_job_needs(recorded_machine):
    request = request_of(gpus_per_run=8, deepspeed="z3")
    fine_tune = {**FULL_Z3_ACROSS_4, "gpus": 8, "gpu_mb": 12 * GB}
    problem = the_problem(recorded_machine, request, fine_tune)
    assert "One fine-tune needs 8 GPUs (train.gpus_per_run: 8) but this machine gives jobs 4" in problem
    assert "nvidia-smi lists 4 x NVIDIA A30" in problem and "set train.gpus_per_run to 4 or fewer" in problem


def test_a_card_too_small_names_the_method_and_stage_that_fit(recorded_machine):
    request = request_of(deepspeed="z2")
    problem = the_problem(recorded_machine, request, FULL_Z2)
    assert "One fine-tune (train.finetuning_type: full, train.deepspeed: z2, train.gpus_per_run: 1)" in problem
    assert "needs 140,000 MB on each GPU, but the smallest card here, NVIDIA A30, has 25,769 MB" in problem
    assert "choose one that fits this machine: train.finetuning_type: lora, train.deepspeed: none" in problem
    assert "or train.finetuning_type: full, train.deepspeed: z3_offload, train.gpus_per_run: 1 (20,000 MB" in problem


def test_host_memory_below_one_jobs_need(recorded_machine):
    request = request_of()
    fine_tune = {**FULL_Z3_OFFLOAD, "host_mb": 240 * GB}  # what profiles/slurm sizes one 7B offload fine-tune at
    problem = the_problem(recorded_machine, request, fine_tune)
    assert "needs 240,000 MB of host memory, but this machine has 120,000 MB (MemTotal)" in problem
    assert "train.finetuning_type: lora, train.deepspeed: none" in problem


def test_fa2_without_flash_attn(recorded_machine, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn raises ImportError
    request = request_of(flash_attn="fa2")
    problem = the_problem(recorded_machine, request, FULL_Z3_OFFLOAD)
    assert "train.hyperparameters.flash_attn is fa2, but flash_attn cannot be imported (ModuleNotFoundError" in problem
    assert "set train.hyperparameters.flash_attn: sdpa" in problem and "`make install-gpu`" in problem
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(__version__="2.8.3"))
    assert check_machine(needs_of(FULL_Z3_OFFLOAD), recorded_machine(A30_MACHINE, request), request).problems == []


def test_offload_without_cpu_adam(recorded_machine, monkeypatch):
    fake_deepspeed(monkeypatch, error=RuntimeError("Error building extension 'cpu_adam'"))
    request = request_of(offload=True)
    problem = the_problem(recorded_machine, request, FULL_Z3_OFFLOAD)
    assert "train.deepspeed: z3_offload offloads the optimizer to the CPU, but DeepSpeed's CPU Adam" in problem
    assert "(RuntimeError: Error building extension 'cpu_adam')" in problem
    assert "scripts/build_deepspeed_ops.py" in problem
    assert "without offload; what fits this machine: train.finetuning_type: lora, train.deepspeed: none" in problem
    fake_deepspeed(monkeypatch, compatible=False)
    assert probe_cpu_adam().detail == "DeepSpeed's cuda accelerator has no compatible CPU Adam"
    fake_deepspeed(monkeypatch)
    assert probe_cpu_adam().ok


def test_vllm_without_a_cuda_platform(recorded_machine, tmp_path):
    python = fake_python(tmp_path, 'echo "INFO vLLM is starting"; echo cpu')
    request = request_of(score_backend="vllm", vllm_python=python)
    problem = the_problem(recorded_machine, request, FULL_Z3_OFFLOAD)
    assert f"score.backend is vllm, but the vLLM venv ({python}) has no CUDA platform" in problem
    assert "(vLLM's platform is cpu)" in problem and "make install-gpu" in problem
    assert probe_vllm(fake_python(tmp_path, "echo cuda")).ok
    assert probe_vllm(tmp_path / "missing" / "python").detail.endswith("does not exist")
    assert probe_vllm(fake_python(tmp_path, "sleep 5"), timeout=0.3).detail == "vLLM did not answer in 0.3 s"


def test_every_problem_is_named_at_once(recorded_machine, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    fake_deepspeed(monkeypatch, error=OSError("libcpu_adam.so: cannot open shared object file"))
    request = request_of(
        gpus_per_run=8,
        flash_attn="fa2",
        offload=True,
        score_backend="vllm",
        vllm_python=fake_python(tmp_path, "exit 3"),
    )
    fine_tune = {**FULL_Z2, "gpus": 8, "host_mb": 200 * GB}
    facts = recorded_machine(A30_MACHINE, request, torch=("2.11.0+cu130", "13.0"))
    report = check_machine(needs_of(fine_tune), facts, request)
    message = report.message()
    assert report.status == "problems" and len(report.problems) == 7
    for said in (
        "driver 535.104.05 is too old",
        "needs 8 GPUs",
        "smallest card here, NVIDIA A30",
        "of host memory, but this machine has 120,000 MB",
        "flash_attn cannot be imported",
        "libcpu_adam.so",
        "(exit status 3)",
    ):
        assert said in message
    assert message.startswith("The machine check found 7 problem(s) before any GPU job started")
    assert "\n7. score.backend is vllm" in message


def test_no_nvidia_driver_when_gpus_are_asked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(machine, "probe_torch", lambda: CUDA_12)
    monkeypatch.setattr(machine, "host_memory_mb", lambda: HOST_120_GB)
    request = request_of(deepspeed="z3")
    report = check_machine(needs_of(FULL_Z3_OFFLOAD), probe_machine(request), request)
    (problem,) = report.problems
    assert "No NVIDIA GPU answers (nvidia-smi is not on PATH), but train.gpus_per_run is 1" in problem


def test_a_cpu_run_passes_untouched(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, and nothing may probe for one

    def no_needs():
        raise AssertionError("a CPU run asks for no memory model")

    monkeypatch.setattr(machine, "probe_machine", no_needs)
    request = MachineRequest(gpus_per_run=0, flash_attn="fa2", score_backend="vllm")
    report = examine(request, no_needs)
    assert (report.status, report.problems, report.facts) == ("cpu", [], None)
    assert examine(request_of(enabled=False), no_needs).status == "skipped"


def test_the_shipped_deepspeed_configs_and_host_memory(tmp_path):
    assert offloads_optimizer(REPO / "config" / "deepspeed" / "z3_offload.json")
    assert not offloads_optimizer(REPO / "config" / "deepspeed" / "z3.json")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       131915776 kB\nMemFree:         1000 kB\n", encoding="utf-8")
    assert host_memory_mb(meminfo) == 135081  # 131,915,776 KiB


def test_an_unreachable_tracking_server_does_not_fail_the_check(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as bound_http_retries sets them, undone after
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    reference = tmp_path / "mlflow_experiment.json"
    reference.write_text(json.dumps({"tracking_uri": "http://127.0.0.1:9", "experiment_id": "1"}), encoding="utf-8")
    log_report_to_mlflow(reference, examine(MachineRequest(gpus_per_run=0), dict))
    assert "the machine report was not logged to MLflow" in caplog.text


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """The rule run alone on the reduced demo's config (a CPU run), its MLflow store created on the way."""
    workdir = tmp_path_factory.mktemp("cpu_run")
    run_snakemake(workdir, small_demo_config(workdir), "--cores", "1", "results/machine.json")
    return workdir


def test_the_rule_passes_a_cpu_run_and_tags_the_experiment(cpu_run):
    report = json.loads((cpu_run / "results" / "machine.json").read_text(encoding="utf-8"))
    assert report["status"] == "cpu" and report["problems"] == [] and report["request"]["gpus_per_run"] == 0
    client = MlflowClient(f"sqlite:///{cpu_run / 'results' / 'mlflow.db'}")
    tags = client.get_experiment_by_name("vlmflow").tags
    assert (tags["machine.status"], tags["machine.problems"]) == ("cpu", "none")


def test_a_run_stops_before_its_first_job_with_the_message(tmp_path, fake_nvidia_smi, cpu_run):
    shutil.copytree(cpu_run, tmp_path, dirs_exist_ok=True)  # its MLflow store: only the check runs again
    fake_bin = fake_nvidia_smi(A30_MACHINE.replace("535.104.05", "580.95.05"))
    model = tmp_path / "qwen2-vl-7b"
    model.mkdir()
    shutil.copy(REPO / "tests" / "data" / "qwen2_vl_7b_config.json", model / "config.json")
    config = small_demo_config(
        tmp_path, model={"name_or_path": str(model)}, train={"gpus_per_run": 8, "deepspeed": "z3"}
    )
    result = run_snakemake(
        tmp_path,
        config,
        "--cores",
        "1",
        "results/baseline/fold0/model",  # a fine-tune: the check stops the run as it starts
        check=False,
        env={"PATH": f"{fake_bin}:{BIN}:/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "The machine check found" in result.stderr
    assert "One fine-tune needs 8 GPUs (train.gpus_per_run: 8) but this machine gives jobs 4" in result.stderr
    assert not (tmp_path / "results" / "baseline").exists()  # no job ran: not a prompt, not a fine-tune
    kept = json.loads((tmp_path / "logs" / "machine" / "machine.json").read_text(encoding="utf-8"))
    assert kept["status"] == "problems" and kept["facts"]["gpus"][0]["memory_mb"] == 25769
