"""Docs that cannot drift: every `vlmflow.` name and every repository path that README.md, docs/ and the library's
docstrings write exists. A module renamed or a file moved fails here, naming the document and the name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

DOTTED = re.compile(r"(?<![\w./-])vlmflow(?:\.[A-Za-z_]\w*)+")
# Paths of the repository's own folders; a run's outputs (results/, logs/, resources/) are made by the workflow.
PATH = re.compile(
    r"(?<![\w./-])(?:src|workflow|tests|docs|config|scripts|benchmarks|profiles|envs|requirements|\.test)/"
    r"[\w./<>{}*-]*[\w/>}*]"
)
# A pattern or a placeholder, not a path: a wildcard, <fold>, {variant}, ...
PLACEHOLDER = re.compile(r"[*<>{}]|\.\.\.")
# Folders a user makes, which a fresh clone does not have.
MADE_BY_THE_USER = {"config/label_overrides"}  # the label review's decisions (docs/stages.md, "The review page")


def documents() -> dict[str, str]:
    """README.md, docs/*.md and every docstring of src/vlmflow, by where they come from."""
    texts = {path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8") for path in [REPO / "README.md"]}
    texts |= {
        path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8") for path in (REPO / "docs").glob("*.md")
    }
    for path in sorted((REPO / "src" / "vlmflow").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [tree, *(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef))]
        docstrings = [ast.get_docstring(node) or "" for node in nodes]
        texts[path.relative_to(REPO).as_posix()] = "\n".join(docstrings)
    return texts


def defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """What a module or class body defines at its top: functions, classes, assignments, imports."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id: node for target in targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0]: node for alias in node.names}
    return names


def resolves(dotted: str) -> bool:
    """A module of src/, or a name its source defines (a class's attribute included), read without importing it:
    importing every module the docs name costs half a minute of torch, mlflow and scikit-learn."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO / "src" / Path(*parts[:cut])
        source = next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)
        if source is None:
            continue
        body = ast.parse(source.read_text(encoding="utf-8")).body
        for name in parts[cut:]:
            found = defined_names(body).get(name)
            if found is None:
                return False
            body = found.body if isinstance(found, ast.ClassDef) else []
        return True
    return False


def named_in_docs(pattern: re.Pattern) -> list[tuple[str, str]]:
    return [(where, match.rstrip(".")) for where, text in documents().items() for match in pattern.findall(text)]


def test_every_vlmflow_name_the_docs_write_exists():
    names = named_in_docs(DOTTED)
    assert len(names) > 50
    assert not resolves("vlmflow.train.take_best_weights")  # what README wrote before the package moved
    missing = sorted({f"{where}: {name}" for where, name in names if not resolves(name)})
    assert not missing, "names that do not exist:\n" + "\n".join(missing)


def test_every_repository_path_the_docs_write_exists():
    paths = [
        (where, path)
        for where, path in named_in_docs(PATH)
        if not PLACEHOLDER.search(path) and path.rstrip("/") not in MADE_BY_THE_USER
    ]
    assert len(paths) > 50
    missing = sorted({f"{where}: {path}" for where, path in paths if not (REPO / path).exists()})
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("see vlmflow.model.train.take_best_weights.", ["vlmflow.model.train.take_best_weights"]),
        ("(`workflow/rules/ocr.smk`)", ["workflow/rules/ocr.smk"]),
    ],
)
def test_the_patterns_find_names_as_docs_write_them(text, found):
    assert [match.rstrip(".") for match in (DOTTED.findall(text) or PATH.findall(text))] == found
