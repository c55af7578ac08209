"""Security properties checked on the code itself: every call site, so a new one cannot slip in.

Image-path confinement to the data root is tested with the ingestion (tests/test_ingest.py).
"""

import ast
import re

import pytest
import yaml

from conftest import REPO

PYTHON_SOURCES = sorted(
    path for folder in ("src", "workflow/scripts", "benchmarks", "tests") for path in (REPO / folder).rglob("*.py")
)


def calls(name: str):
    """(file, call node) for every call whose dotted name ends with ``name``."""
    for path in PYTHON_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
                yield path.relative_to(REPO), node


def keyword(node: ast.Call, name: str):
    return next((ast.unparse(k.value) for k in node.keywords if k.arg == name), None)


def test_the_sources_are_found():
    assert len(PYTHON_SOURCES) > 40 and any(path.name == "train.py" for path in PYTHON_SOURCES)


def test_subprocesses_take_argument_lists_never_a_shell_string():
    runs = list(calls("subprocess.run")) + list(calls("subprocess.Popen")) + list(calls("subprocess.check_output"))
    assert runs, "the trainer is started through subprocess"
    offenders = [f"{path}:{node.lineno}" for path, node in runs if keyword(node, "shell") not in (None, "False")]
    assert not offenders, f"shell=True at {offenders}"
    assert not list(calls("os.system")) and not list(calls("os.popen"))


def test_rules_run_scripts_not_shell_strings_built_from_config():
    rules = "\n".join(path.read_text(encoding="utf-8") for path in (REPO / "workflow/rules").glob("*.smk"))
    assert "script:" in rules and not re.search(r"^\s+shell:", rules, re.MULTILINE)


def test_yaml_is_loaded_safely():
    unsafe = [
        f"{path}:{node.lineno}" for path, node in calls("yaml.load") if keyword(node, "Loader") != "yaml.SafeLoader"
    ]
    unsafe += [f"{path}:{node.lineno}" for path, node in calls("yaml.unsafe_load")]
    unsafe += [f"{path}:{node.lineno}" for path, node in calls("yaml.full_load")]
    assert not unsafe, f"unsafe YAML loading at {unsafe}"
    assert list(calls("yaml.safe_load"))


def test_weights_are_read_through_safetensors_never_unpickled():
    # Our code reads weights only through safetensors (averaging, tests): a pickle load of a model file
    # from elsewhere could run code. The library and scripts must not unpickle at all.
    loads = [*calls("torch.load"), *calls("pickle.load"), *calls("pickle.loads"), *calls("joblib.load")]
    assert not loads, f"unpickling at {[f'{path}:{node.lineno}' for path, node in loads]}"
    assert list(calls("load_file")), "safetensors' load_file is how weights are read"


def test_mlflow_ui_and_server_bind_to_localhost_by_default():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    commands = re.findall(r"mlflow (?:ui|server)[^\n\"]*", makefile)
    assert commands and all("--host 127.0.0.1" in command for command in commands)
    for script in (REPO / "scripts").glob("*mlflow*"):
        text = script.read_text(encoding="utf-8")
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert any("127.0.0.1" in line for line in code) and not any("0.0.0.0" in line for line in code)


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_the_shipped_configs_hold_no_secret(name):
    config = yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))
    text = yaml.safe_dump(config).lower()
    assert not re.search(r"(api_key|password|token)\s*:\s*\S", text)
