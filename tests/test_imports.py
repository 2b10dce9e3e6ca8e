"""The module structure: every foldvision module imports alone in a fresh interpreter, and no cycle
runs through the module-level imports (a cycle held off only by imports inside functions breaks as
soon as someone moves such an import to the top)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `src`."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _top_level_statements(body: list[ast.stmt]):
    """Statements run at import time: the module body and its if/try blocks, but not the
    `if TYPE_CHECKING:` block (never run) nor function and class bodies' function definitions."""
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name != "TYPE_CHECKING":
                yield from _top_level_statements(node.body)
            yield from _top_level_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_statements(block)
        else:
            yield node


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level (ast; nothing is executed)."""
    modules = _modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _top_level_statements(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the submodule pkg.mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # foldvision.x.func -> foldvision.x
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_level_import_cycle() -> None:
    graph = import_graph(SRC, "foldvision")
    assert len(graph) > 20 and graph["foldvision.cv"], "the graph must see the package's modules and imports"
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    """The check itself: a cycle through `from pkg import mod`, a relative import and a dotted
    import is found; imports inside functions and under TYPE_CHECKING are not edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\n")
    (pkg / "e.py").write_text("def f():\n    import pkg.d\nimport pkg.d\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("def f():\n    import pkg.a\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    """Each module imported first, alone, in a fresh interpreter (an import-order dependency or a
    cycle shows up as an ImportError for some first module)."""
    names = sorted(n for n in _modules(SRC, "foldvision") if n != "foldvision.__main__")  # __main__ runs the CLI

    def run(name: str) -> tuple[str, int, str]:
        p = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        return name, p.returncode, p.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [r for r in pool.map(run, names) if r[1] != 0]
    assert not failed, "\n".join(f"{n}:\n{err}" for n, _, err in failed)


def test_predict_imports_foldvision_at_module_top() -> None:
    """predict.py imports its foldvision modules at the top (no cycle results): an import inside a
    function hides the module structure and repeats (merge damage once left two in one function)."""
    tree = ast.parse((SRC / "foldvision" / "predict.py").read_text())
    inner = [
        f"line {node.lineno}: {node.module}"
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("foldvision")
    ]
    assert not inner, f"foldvision imports inside functions of predict.py: {inner}"
