"""The library's modules import each other without a cycle, counting imports inside functions too: a cycle hidden
behind a function-level import still ties two modules into one that neither can be read or changed without."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO
from helpers.imports import imports_of

SRC = REPO / "src"


def library_modules(src: Path = SRC) -> dict[str, Path]:
    modules = {}
    for path in sorted((src / "vlmflow").rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of other library modules (``from vlmflow.x import y`` counts ``vlmflow.x.y`` when that
    is a module)."""
    return {name: (imports_of(path) & modules.keys()) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_library_has_no_import_cycle():
    graph = import_graph(library_modules())
    assert len(graph) > 40
    assert cycles(graph) == []


def test_a_cycle_added_back_is_found(tmp_path):
    package = tmp_path / "vlmflow"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from vlmflow.b import g\n")
    (package / "b.py").write_text("def g():\n    from vlmflow import c\n")  # hidden in a function
    (package / "c.py").write_text("import vlmflow.a\n")
    assert cycles(import_graph(library_modules(tmp_path))) == [["vlmflow.a", "vlmflow.b", "vlmflow.c"]]
