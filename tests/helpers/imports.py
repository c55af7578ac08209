"""What a Python file imports, read from its source (nothing is imported): the names of every ``import`` and absolute
``from ... import``, inside functions too."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path


@cache
def imports_of(path: Path) -> frozenset[str]:
    """Every module name ``path`` imports; ``from x import y`` counts ``x`` and ``x.y`` (``y`` may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from vlmflow.model import scoring` imports a module too
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return frozenset(names)
