"""The machine check before the first GPU job: every problem that would stop a GPU run, named at once, with its fix.

A GPU run on a machine that cannot hold it fails an hour in (a killed trainer, an out-of-memory card, a driver
too old for torch's CUDA), one problem per attempt. ``check_machine`` compares what one job needs (the memory
model, ``vlmflow.runtime.memory.job_needs``) and what the configuration asks for with what the machine has,
and returns every problem together. It is a pure function over plain data, so that tests feed it recorded
machines; the probes that gather the facts (``nvidia-smi``, ``/proc/meminfo``, imports, the vLLM venv) are the
small functions below it. A CPU run (``train.gpus_per_run: 0``, the demo) declares no GPU job: it passes
without a probe.

The rule ``check_machine`` (workflow/rules/machine.smk) writes the report to ``results/machine.json`` and onto
the MLflow experiment (``log_report_to_mlflow``), and fails with the message when there are problems.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import socket
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmflow.runtime.memory import fitting, host_memory_total_mb, mib_as_mb

log = logging.getLogger(__name__)

# NVIDIA's minimum Linux driver per CUDA major version under minor-version compatibility: "CUDA Toolkit and
# Minimum Required Driver Version for CUDA Minor Version Compatibility" in the CUDA Toolkit release notes
# (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/) and Table 1 of
# https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html. torch's wheels bundle
# their CUDA runtime (requirements/lock.txt: torch 2.11.0 with nvidia-cuda-runtime 13.0), so only the driver counts.
MINIMUM_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
GPU_QUERY = [
    "nvidia-smi",
    "--query-gpu=driver_version,name,memory.total,memory.free",
    "--format=csv,noheader,nounits",
]
NVIDIA_SMI_SECONDS = 30
# Importing vLLM in its venv takes tens of seconds on a cold disk; a hung import must not hold the run.
VLLM_PLATFORM_CODE = "from vllm.platforms import current_platform; print(current_platform.device_type)"
VLLM_PROBE_SECONDS = 180
MLFLOW_TAG_CHARACTERS = 5000  # what any MLflow store keeps of an experiment tag's value


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mb: int  # nvidia-smi's memory.total, in MB (10**6 bytes) as vlmflow.runtime.memory counts a job's need
    free_mb: int


@dataclass(frozen=True)
class Probe:
    """The answer of one optional probe: whether the feature works here, and what was seen."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class MachineRequest:
    """What the configuration asks of the machine, beyond the memory one job needs."""

    gpus_per_run: int
    flash_attn: str = "auto"
    deepspeed: str = "none"
    offload: bool = False  # the DeepSpeed config offloads the optimizer: DeepSpeed's CPU Adam steps it
    score_backend: str = "transformers"
    vllm_python: str = ".venv-vllm/bin/python"
    enabled: bool = True  # machine_check.enabled

    @property
    def cpu(self) -> bool:
        """No rule declares a GPU (train.gpus_per_run 0 trains and scores on the CPU)."""
        return self.gpus_per_run == 0

    @classmethod
    def of(cls, train: dict, score: dict, check: dict, deepspeed_file: str | Path | None) -> MachineRequest:
        """The request of a configuration's ``train`` and ``machine_check`` sections and its scoring settings
        (``score``: ``backend`` and the resolved ``vllm_python``); ``deepspeed_file`` is the DeepSpeed config."""
        return cls(
            gpus_per_run=train["gpus_per_run"],
            flash_attn=train["hyperparameters"].get("flash_attn", "auto"),
            deepspeed=train["deepspeed"],
            offload=bool(deepspeed_file) and offloads_optimizer(deepspeed_file),
            score_backend=score["backend"],
            vllm_python=score["vllm_python"],
            enabled=check["enabled"],
        )


@dataclass(frozen=True)
class MachineFacts:
    """What the probes found. A probe of a feature nobody asked for is not run (None)."""

    host: str
    host_mb: int  # /proc/meminfo MemTotal
    gpus: tuple[Gpu, ...] = ()  # every card nvidia-smi lists
    pool: tuple[str, ...] = ()  # the device ids jobs lease from (vlmflow.runtime.gpu_lease.gpu_pool)
    driver: str | None = None
    nvidia_smi_error: str | None = None
    torch: str | None = None
    torch_cuda: str | None = None  # torch.version.cuda; None for a CPU build of torch
    flash_attn: Probe | None = None
    cpu_adam: Probe | None = None
    vllm: Probe | None = None


@dataclass
class MachineReport:
    status: str  # ok, problems, cpu (no GPU job to check) or skipped (machine_check.enabled false)
    request: MachineRequest
    facts: MachineFacts | None = None
    needs: dict | None = None
    problems: list[str] = field(default_factory=list)
    fits: list[dict] = field(default_factory=list)  # the needs' alternatives this machine can run

    def as_json(self) -> dict:
        return asdict(self)

    def message(self, report_path: str | Path = "the machine report") -> str:
        """The failure message: every problem, numbered, with its numbers and its fix."""
        where = f" ({self.facts.host})" if self.facts else ""
        lines = [f"The machine check found {len(self.problems)} problem(s) before any GPU job started{where}:"]
        lines += [f"{number}. {problem}" for number, problem in enumerate(self.problems, 1)]
        lines.append(
            f"What was found is in {report_path}. Fix the problems and run again, or skip the check with "
            "machine_check.enabled: false in the config."
        )
        return "\n".join(lines)


def check_machine(needs: dict, machine: MachineFacts, request: MachineRequest) -> MachineReport:
    """Every reason ``machine`` cannot run one job of ``needs`` (``memory.job_needs``'s form) as ``request`` asks."""
    problems: list[str] = []
    fine_tune, scoring = needs["fine_tune"], needs["scoring"]
    gpus = len(machine.pool)
    card_mb = min((gpu.memory_mb for gpu in machine.gpus), default=0)
    fits = fitting(needs["alternatives"], gpus, card_mb, machine.host_mb)

    if machine.nvidia_smi_error is not None:
        problems.append(
            f"No NVIDIA GPU answers ({machine.nvidia_smi_error}), but train.gpus_per_run is {request.gpus_per_run}. "
            "Fix: install the NVIDIA driver (nvidia-smi must list the cards), or run on the CPU with "
            "train.gpus_per_run: 0."
        )
    if machine.torch_cuda is None:
        problems.append(
            f"torch {machine.torch} is a build without CUDA. Fix: install the CUDA build that requirements/torch.txt "
            "pins (PyPI's default wheel): `make install`."
        )
    elif machine.driver is not None:
        problems += driver_problems(machine.driver, machine.torch_cuda, machine.torch)
    if machine.nvidia_smi_error is None:
        job_gpus = max(fine_tune["gpus"], scoring["gpus"])
        if job_gpus > gpus:
            problems.append(
                f"One fine-tune needs {job_gpus} GPUs (train.gpus_per_run: {request.gpus_per_run}) but this machine "
                f"gives jobs {gpus} ({_pool_text(machine)}). Fix: set train.gpus_per_run to {gpus} or fewer"
                f"{_with_fits(fits)}, or run on a machine with {job_gpus} GPUs."
            )
        if fine_tune["gpu_mb"] > card_mb:
            problems.append(
                f"One fine-tune ({_option_text(fine_tune)}) needs {_mb(fine_tune['gpu_mb'])} on each GPU, but the "
                f"smallest card here, {_smallest(machine).name}, has {_mb(card_mb)}. Fix: "
                + _alternatives_text(fits, "card")
            )
        if scoring["gpu_mb"] > card_mb:
            problems.append(
                f"One scoring job needs {_mb(scoring['gpu_mb'])} on its GPU, but the smallest card here, "
                f"{_smallest(machine).name}, has {_mb(card_mb)}. Fix: a smaller score.batch_size where one is set "
                "(null chooses it from the free memory), or a larger card."
            )
    if fine_tune["host_mb"] > machine.host_mb:
        problems.append(
            f"One fine-tune ({_option_text(fine_tune)}) needs {_mb(fine_tune['host_mb'])} of host memory, but this "
            f"machine has {_mb(machine.host_mb)} (MemTotal). Fix: " + _alternatives_text(fits, "machine")
        )
    if scoring["host_mb"] > machine.host_mb:
        problems.append(
            f"One scoring job needs {_mb(scoring['host_mb'])} of host memory, but this machine has "
            f"{_mb(machine.host_mb)} (MemTotal). Fix: run on a machine with more memory."
        )
    if machine.flash_attn is not None and not machine.flash_attn.ok:
        problems.append(
            "train.hyperparameters.flash_attn is fa2, but flash_attn cannot be imported "
            f"({machine.flash_attn.detail}); LLaMA-Factory would only log this and train with SDPA. Fix: "
            "`make install-gpu` (it builds flash-attn with --no-build-isolation), or set "
            "train.hyperparameters.flash_attn: sdpa."
        )
    if machine.cpu_adam is not None and not machine.cpu_adam.ok:
        problems.append(
            f"train.deepspeed: {request.deepspeed} offloads the optimizer to the CPU, but DeepSpeed's CPU Adam "
            f"cannot be built or loaded ({machine.cpu_adam.detail}). Fix: build it with "
            "`.venv/bin/python scripts/build_deepspeed_ops.py` (it needs a C++ compiler, ninja and the CUDA "
            "headers torch was built with), or choose a DeepSpeed config without offload"
            f"{_with_fits([option for option in fits if not option['deepspeed'].endswith('offload')])}."
        )
    if machine.vllm is not None and not machine.vllm.ok:
        problems.append(
            f"score.backend is vllm, but the vLLM venv ({request.vllm_python}) has no CUDA platform "
            f"({machine.vllm.detail}). Fix: `make install-gpu` on this machine (the CUDA vllm; make install-vllm is "
            "the CPU build), or set score.backend: transformers."
        )
    status = "problems" if problems else "ok"
    return MachineReport(status, request, machine, needs, problems, fits)


def driver_problems(driver: str, cuda: str, torch: str | None) -> list[str]:
    """Why a torch built for CUDA ``cuda`` cannot run on NVIDIA driver ``driver`` (NVIDIA's minimum per major version,
    MINIMUM_DRIVER), with the fix; [] when it can. The machine check and scripts/install_gpu.py both ask it."""
    major = int(cuda.split(".")[0])
    minimum = MINIMUM_DRIVER.get(major)
    if minimum is None or _version(driver) >= _version(minimum):
        return []
    return [
        f"NVIDIA driver {driver} is too old for torch {torch}, built with CUDA {cuda}: CUDA {major}.x needs driver "
        f"{minimum} or newer on Linux. Fix: update the driver to {minimum.split('.')[0]} or newer, or install a "
        "torch built for the CUDA this driver supports (requirements/torch.txt)."
    ]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _mb(value: int) -> str:
    return f"{value:,} MB"


def _smallest(machine: MachineFacts) -> Gpu:
    return min(machine.gpus, key=lambda gpu: gpu.memory_mb, default=Gpu("no GPU", 0, 0))


def _pool_text(machine: MachineFacts) -> str:
    cards = f"{len(machine.gpus)} x {machine.gpus[0].name}" if machine.gpus else "no cards"
    return f"nvidia-smi lists {cards}; the pool of device ids is {','.join(machine.pool) or 'empty'}"


def _option_text(option: dict) -> str:
    return (
        f"train.finetuning_type: {option['method']}, train.deepspeed: {option['deepspeed']}, "
        f"train.gpus_per_run: {option['gpus']}"
    )


def _fit_text(option: dict) -> str:
    return f"{_option_text(option)} ({_mb(option['gpu_mb'])} a GPU, {_mb(option['host_mb'])} of host memory)"


def _with_fits(fits: list[dict]) -> str:
    return "; what fits this machine: " + "; or ".join(_fit_text(option) for option in fits) if fits else ""


def _alternatives_text(fits: list[dict], larger: str) -> str:
    if not fits:
        return f"no method and DeepSpeed stage fits this machine: use a smaller model or a larger {larger}."
    return "choose one that fits this machine: " + "; or ".join(_fit_text(option) for option in fits) + "."


def examine(request: MachineRequest, needs: Callable[[], dict]) -> MachineReport:
    """Probe the machine for ``request`` and check it against ``needs()``. A CPU run and a disabled check pass
    without a probe (the demo needs no nvidia-smi)."""
    if request.cpu:
        return MachineReport("cpu", request)
    if not request.enabled:
        return MachineReport("skipped", request)
    return check_machine(needs(), probe_machine(request), request)


def examine_run(config: dict, score: dict, check: dict, deepspeed_file: str | Path | None) -> MachineReport:
    """The check of a run's configuration (the rule's and the run's start alike): what it asks of the machine, against
    what one of its jobs needs (``memory.job_needs``)."""
    from vlmflow.runtime.memory import job_needs

    return examine(MachineRequest.of(config["train"], score, check, deepspeed_file), lambda: job_needs(config))


def probe_machine(request: MachineRequest) -> MachineFacts:
    """The facts ``check_machine`` reads, probing optional features only where ``request`` asks for them."""
    from vlmflow.runtime.gpu_lease import gpu_pool

    driver, gpus, error = probe_gpus()
    torch_version, torch_cuda = probe_torch()
    return MachineFacts(
        host=socket.gethostname(),
        host_mb=host_memory_mb(),
        gpus=gpus,
        pool=tuple(gpu_pool()) if error is None else (),
        driver=driver,
        nvidia_smi_error=error,
        torch=torch_version,
        torch_cuda=torch_cuda,
        flash_attn=probe_import("flash_attn") if request.flash_attn == "fa2" else None,
        cpu_adam=probe_cpu_adam() if request.offload else None,
        vllm=probe_vllm(request.vllm_python) if request.score_backend == "vllm" else None,
    )


def probe_gpus() -> tuple[str | None, tuple[Gpu, ...], str | None]:
    """The driver version and the cards nvidia-smi lists, or why it lists none."""
    try:
        result = subprocess.run(GPU_QUERY, capture_output=True, text=True, timeout=NVIDIA_SMI_SECONDS)
    except FileNotFoundError:
        return None, (), "nvidia-smi is not on PATH"
    except subprocess.TimeoutExpired:
        return None, (), f"nvidia-smi did not answer in {NVIDIA_SMI_SECONDS} s"
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip().splitlines() or [f"exit status {result.returncode}"]
        return None, (), f"nvidia-smi failed: {said[0]}"
    rows = [row for row in csv.reader(result.stdout.splitlines(), skipinitialspace=True) if row]
    gpus = tuple(Gpu(name, _number(total), _number(free)) for _, name, total, free in rows)
    if not gpus:
        return None, (), "nvidia-smi lists no GPU"
    return rows[0][0], gpus, None


def _number(text: str) -> int:
    """An nvidia-smi memory figure (MiB) in MB; "[N/A]" (some virtual GPUs) reads as 0, which no job fits."""
    try:
        return mib_as_mb(float(text))
    except ValueError:
        return 0


def probe_torch() -> tuple[str, str | None]:
    import torch

    return torch.__version__, torch.version.cuda


def host_memory_mb(meminfo: str | Path = "/proc/meminfo") -> int:
    """MemTotal of ``/proc/meminfo`` in MB, read as the profile writer reads it."""
    return host_memory_total_mb(Path(meminfo).read_text(encoding="utf-8"))


def probe_import(module: str) -> Probe:
    """Whether ``module`` imports: an installed flash-attn built for another torch fails here, not at find_spec."""
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # ImportError, or an undefined symbol of a build for another torch
        return Probe(False, _first_line(error))
    return Probe(True, f"{module} {getattr(imported, '__version__', '')}".strip())


def probe_cpu_adam() -> Probe:
    """Whether DeepSpeed's CPU Adam builds or loads, through this machine's accelerator (as
    scripts/build_deepspeed_ops.py builds it at install)."""
    try:
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("CPUAdamBuilder")
        if builder is None or not builder.is_compatible():
            return Probe(False, f"DeepSpeed's {get_accelerator().device_name()} accelerator has no compatible CPU Adam")
        builder.load(verbose=False)
    except Exception as error:  # an import, compiler or loader failure: each is the same problem to the user
        return Probe(False, _first_line(error))
    return Probe(True, "DeepSpeed CPU Adam loaded")


def probe_vllm(python: str | Path, timeout: float = VLLM_PROBE_SECONDS) -> Probe:
    """The platform vLLM finds in its own venv (``cuda`` on an NVIDIA machine)."""
    try:
        result = subprocess.run(
            [str(python), "-c", VLLM_PLATFORM_CODE], capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        return Probe(False, f"{python} does not exist")
    except subprocess.TimeoutExpired:
        return Probe(False, f"vLLM did not answer in {timeout:g} s")
    if result.returncode != 0:
        said = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return Probe(False, said[-1])
    said = result.stdout.strip().splitlines()  # vLLM may log before the answer: it is the last line
    device = said[-1].strip() if said else ""
    return Probe(device == "cuda", f"vLLM's platform is {device or 'unspecified'}")


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def offloads_optimizer(deepspeed_file: str | Path) -> bool:
    """Whether a DeepSpeed config offloads the optimizer (to cpu or nvme): DeepSpeed then steps it with CPU Adam."""
    zero = json.loads(Path(deepspeed_file).read_text(encoding="utf-8")).get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


def write_report(path: str | Path, report: MachineReport) -> None:
    from vlmflow.runtime.outputs import write_text_atomically

    write_text_atomically(path, json.dumps(report.as_json(), indent=2) + "\n")


def report_tags(report: MachineReport) -> dict[str, str]:
    """The report as experiment tags, which the MLflow UI lists with the experiment."""
    tags = {"machine.status": report.status}
    facts = report.facts
    if facts is not None:
        names = sorted({gpu.name for gpu in facts.gpus})
        cards = f"{len(facts.gpus)} x {', '.join(names)} ({_mb(_smallest(facts).memory_mb)})" if facts.gpus else "none"
        tags |= {
            "machine.host": facts.host,
            "machine.gpus": cards,
            "machine.driver": f"{facts.driver or 'none'} (torch {facts.torch}, CUDA {facts.torch_cuda or 'none'})",
            "machine.host_memory": _mb(facts.host_mb),
        }
    tags["machine.problems"] = "\n".join(report.problems)[:MLFLOW_TAG_CHARACTERS] or "none"
    return tags


def log_report_to_mlflow(experiment_reference: str | Path, report: MachineReport) -> None:
    """Set the report's tags on the run's MLflow experiment; a store that fails is logged, never fatal."""
    from mlflow.tracking import MlflowClient

    from vlmflow.tracking.offline import bound_http_retries
    from vlmflow.tracking.runs import read_run, retry_locked

    try:
        bound_http_retries()  # a lost server gives up in seconds, not minutes
        store = read_run(experiment_reference)
        client = MlflowClient(store["tracking_uri"])
        for key, value in report_tags(report).items():
            retry_locked(lambda key=key, value=value: client.set_experiment_tag(store["experiment_id"], key, value))
    except Exception as error:  # the check's verdict never depends on the tracking server
        log.warning("the machine report was not logged to MLflow: %s", _first_line(error))
