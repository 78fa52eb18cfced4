"""The project's import graph has no circles: every `import` in flows/, tasks/, jobdb/, simulator/, bench/ and tests/ (sub-packages too),
read with `ast` (module level and inside functions alike: a lazy import is still a circle).

    python -m tests.test_import_graph        # prints every circle found, exit 1 if any
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "jobdb", "simulator", "bench", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> Dict[str, Set[str]]:
    """module -> project modules it imports (`from pkg import mod` counts as importing pkg.mod)."""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in files and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_sees_lazy_imports():
    graph = import_graph()
    assert "flows.config.params" in graph["flows.config.blocks"] and "tasks.accounts.pacing" in graph["tasks.connections"]
    assert "flows.run_jobs" in graph["flows.console.cli"]  # imported inside main(): found all the same
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_circle_through_the_backend_model():
    """Backends, auth, connections and pacing (issue 11's "one backend model") import in one direction."""
    mine = {"flows.config.params", "flows.config.blocks", "flows.config.setup", "flows.config.login", "flows.config.backend_spec",
            "tasks.connections", "tasks.accounts.pacing", "tasks.faults"}
    circles = [c for c in cycles(import_graph()) if mine & set(c)]
    assert circles == []


if __name__ == "__main__":
    found = cycles(import_graph())
    for group in found:
        print("circle:", " <-> ".join(group))
    print(f"{len(found)} circle(s) among {len(import_graph())} modules")
    sys.exit(1 if found else 0)
