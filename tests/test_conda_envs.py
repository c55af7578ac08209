"""The rules' conda environments (envs/*.yaml) are written from the lock and hold what their rules' code imports.

conda's channels cannot be reached here, so the environments are read, never built: the versions against the lock
(scripts/write_conda_envs.py --check), the packages against the imports of every rule's script and of the vlmflow
modules it reaches, with the dependencies the installed packages declare (the tests' venv is the lock installed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from conftest import REPO
from helpers.imports import imports_of

WRITER = [sys.executable, str(REPO / "scripts" / "write_conda_envs.py")]
# Imported by code a rule reaches, yet not from the rule's environment, each for its reason.
ELSEWHERE = {
    "vllm": "the vLLM backend runs it in its own venv (score.vllm_python), never in the rule's environment",
    "paddleocr": "ocr.engine paddleocr only, an opt-in engine with its own install (docs/stages.md, OCR)",
    "paddle": "ocr.engine paddleocr only",
    "flash_attn": "envs/gpu-extras.yaml, laid over the training environment on a GPU machine",
}
# A module reached through a function the rule never calls (the imports inside functions are all counted).
NOT_CALLED = {
    ("merge_test_shards", "llamafactory"): "merges score tables; scoring.py loads models only in the scoring rules",
    ("merge_test_shards", "peft"): "the same: LoRA adapters are loaded by the scoring rules (envs/train.yaml)",
    ("correct_labels", "cv2"): "reads OCR text (data.ocr.text_by_record); the engine runs in ocr_shard",
    ("correct_labels", "rapidocr"): "the same",
}


def test_the_environments_are_what_the_lock_gives():
    result = subprocess.run([*WRITER, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_pin_changed_in_one_environment_fails_the_check_naming_it(tmp_path):
    for relative in ("requirements", "envs"):
        shutil.copytree(REPO / relative, tmp_path / relative)
    core = tmp_path / "envs" / "core.yaml"
    core.write_text(core.read_text(encoding="utf-8").replace("transformers==5.5.4", "transformers==5.6.0"))
    result = subprocess.run([*WRITER, "--check", "--repo", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "envs/core.yaml: not what requirements/lock.txt gives" in result.stderr
    assert "train.yaml" not in result.stderr


def rule_environments() -> dict[str, tuple[Path, Path]]:
    """Each rule with a script: its conda environment file and its script."""
    found = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", smk.read_text(encoding="utf-8")):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            conda = re.search(r"\n    conda:\n\s+\"([^\"]+)\"", block)
            script = re.search(r"\n    script:\n\s+\"([^\"]+)\"", block)
            if name and conda and script:
                found[name[1]] = (smk.parent / conda[1]).resolve(), (smk.parent / script[1]).resolve()
    return found


def module_file(name: str) -> Path | None:
    base = REPO / "src" / Path(*name.split("."))
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


def third_party_imports(script: Path) -> set[str]:
    """Top-level modules outside the standard library imported by ``script`` and every vlmflow module it reaches
    (imports inside functions included: a rule's code may take any branch)."""
    seen, todo, found = set(), [script], set()
    while todo:
        for name in imports_of(todo.pop()):
            top = name.split(".")[0]
            if top != "vlmflow":
                if top not in sys.stdlib_module_names:
                    found.add(top)
            elif name not in seen and (path := module_file(name)):
                seen.add(name)
                todo.append(path)
    return found


@cache
def with_dependencies(distribution: str) -> frozenset[str]:
    """``distribution`` and what it requires, as installed, extras left out."""
    closure, todo = set(), [distribution]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in closure:
            continue
        closure.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return frozenset(closure)


def environment_distributions(env_file: Path) -> set[str]:
    spec = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    pip = next(entry["pip"] for entry in spec["dependencies"] if isinstance(entry, dict))
    return set().union(*(with_dependencies(Requirement(line).name) for line in pip))


def test_every_module_a_rules_code_imports_is_in_its_environment():
    providers = metadata.packages_distributions()
    rules = rule_environments()
    assert len(rules) > 30 and {"train_fold", "ocr_shard", "find_duplicates"} <= rules.keys()
    missing, excused = [], set()
    for rule, (env_file, script) in sorted(rules.items()):
        available = environment_distributions(env_file)
        for module in sorted(third_party_imports(script) - ELSEWHERE.keys()):
            if (rule, module) in NOT_CALLED:
                excused.add((rule, module))
                continue
            distributions = {name.lower().replace("_", "-") for name in providers.get(module, [module])}
            if not distributions & available:
                missing.append(f"{rule} ({env_file.name}): {module} ({', '.join(sorted(distributions))})")
    assert not missing, "imported by a rule's code, not in its environment:\n" + "\n".join(missing)
    assert excused == NOT_CALLED.keys(), "NOT_CALLED names what no rule reaches any more: remove it"
