"""Write envs/*.yaml, the rules' conda environments (`--software-deployment-method conda`), from the lock.

requirements/lock.txt is the one home of every version the tests run on (requirements/gpu.txt and
requirements/deepspeed.txt of the GPU-only and source-built ones): an environment names its packages here and takes
each one's pin from there. `python scripts/write_conda_envs.py` rewrites the files; `--check` fails, naming each
file that differs, when an edit of the lock or of a file was not carried over (tests/test_conda_envs.py runs it).
conda's channels cannot be reached where the tests run, so the files are compared and read, never built.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIN_FILES = ["requirements/lock.txt", "requirements/deepspeed.txt", "requirements/gpu.txt"]
USE = "Jobs import the vlmflow library: install it into the env with `pip install --no-deps -e .`."


@dataclass(frozen=True)
class Environment:
    name: str
    purpose: str
    packages: tuple[str, ...]  # pip names; pinned from the lock unless listed in UNPINNED
    conda: tuple[str, ...] = ()  # conda-forge packages besides python and pip


# torch's CPU and CUDA builds share a version; conda installs PyPI's default build, CUDA on Linux.
TORCH = ("torch", "torchvision", "torchaudio")
TABLES = ("pandas", "pyarrow", "numpy", "PyYAML", "pillow", "matplotlib", "scikit-learn", "jsonschema")
ENVIRONMENTS = [
    Environment(
        "core",
        "Data, demo, prompts, folds, metrics, label review and MLflow rules (scoring runs in envs/train.yaml).",
        (*TORCH, "transformers", "tokenizers", *TABLES, "mlflow", "cleanlab", "ImageHash", "httpx", "Jinja2"),
    ),
    Environment(
        "train",
        "Fine-tunes through `llamafactory-cli train`, DeepSpeed included (the demo model's pretraining too).",
        (*TORCH, "llamafactory", "transformers", "tokenizers", "deepspeed", *TABLES, "mlflow"),
        conda=("ninja",),  # DeepSpeed compiles CPU Adam with it at the first offloaded step
    ),
    Environment(
        "ocr",
        "OCR shards: RapidOCR on onnxruntime, offline (ImageHash: the split tables' reader counts duplicates).",
        ("rapidocr", "onnxruntime", *TABLES, "mlflow", "ImageHash"),
    ),
    Environment(
        "gpu-extras",
        "Optional GPU extras laid over envs/train.yaml: FlashAttention-2 (LLaMA-Factory's `flash_attn: fa2`, built\n"
        "# against the env's torch: `pip install --no-build-isolation`), Liger's kernels (`enable_liger_kernel`) and\n"
        "# PaddleOCR on the GPU (ocr.engine: paddleocr). Never needed on a CPU machine.",
        ("flash-attn", "liger-kernel", "paddleocr", "paddlepaddle-gpu"),
    ),
]
# flash-attn is built on the GPU machine against its torch and CUDA, so no version of ours fits every machine;
# PaddleOCR is an opt-in engine the tests never install (docs/stages.md, OCR), so the lock has no version of it.
UNPINNED = {"flash-attn", "paddleocr", "paddlepaddle-gpu"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(repo: Path = REPO) -> dict[str, str]:
    """``name==version`` lines of the pin files, by canonical name."""
    pins = {}
    for relative in PIN_FILES:
        for line in (repo / relative).read_text(encoding="utf-8").splitlines():
            found = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
            if found:
                pins[canonical(found[1])] = f"{found[1]}=={found[2]}"
    return pins


def render(environment: Environment, pins: dict[str, str]) -> str:
    missing = [name for name in environment.packages if name not in UNPINNED and canonical(name) not in pins]
    if missing:
        raise SystemExit(f"envs/{environment.name}.yaml: {', '.join(missing)} not pinned in {', '.join(PIN_FILES)}")
    requirements = [name if name in UNPINNED else pins[canonical(name)] for name in environment.packages]
    lines = [
        f"# {environment.purpose}",
        f"# {USE}",
        "# Written by scripts/write_conda_envs.py from requirements/lock.txt: edit that script or the lock, not this.",
        f"name: vlmflow-{environment.name}",
        "channels:",
        "  - conda-forge",
        "  - nodefaults",
        "dependencies:",
        "  - python =3.11",
        "  - pip",
        *(f"  - {package}" for package in environment.conda),
        "  - pip:",
        *(f"      - {requirement}" for requirement in requirements),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file differs from what would be written")
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args(argv)
    pins = read_pins(args.repo)
    differing = []
    for environment in ENVIRONMENTS:
        path = args.repo / "envs" / f"{environment.name}.yaml"
        text = render(environment, pins)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                differing.append(str(path.relative_to(args.repo)))
        else:
            path.write_text(text, encoding="utf-8")
    if differing:
        print(
            f"{', '.join(differing)}: not what requirements/lock.txt gives; run python scripts/write_conda_envs.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
