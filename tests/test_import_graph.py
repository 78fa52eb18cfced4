"""The project's import graph has no circles: every `import` in flows/, tasks/, jobdb/, simulator/, bench/ and tests/ (sub-packages too),
read with `ast` (module level and inside functions alike: a lazy import is still a circle).

    python -m tests.test_import_graph        # prints every circle found, exit 1 if any

It also checks the layers: jobdb/ (the lowest) imports nothing from tasks/ or flows/, and
simulator/ (a stand-in backend) nothing from the project.
"""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "jobdb", "simulator", "bench", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def lazy_names(tree: ast.Module) -> Dict[str, str]:
    """A package `__init__` that loads its names on first use (PEP 562, jobdb/__init__.py) maps
    them in a literal `_HOMES = {name: (module, attribute)}`: name -> the module it loads."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_HOMES" for t in node.targets):
            return {name: home[0] for name, home in ast.literal_eval(node.value).items()}
    return {}


def import_graph() -> Dict[str, Set[str]]:
    """module -> project modules it imports (`from pkg import mod` counts as importing pkg.mod, and
    `from pkg import name` as importing the module a lazy package loads the name from)."""
    return {name: set(targets) for name, targets in _parsed_graph().items()}  # a copy: callers may change it


@functools.lru_cache(maxsize=1)
def _parsed_graph() -> Dict[str, Set[str]]:
    """Parsed once per process: the files do not change during a test session (parsing all of
    them is seconds of CPU, and every test here reads the graph)."""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    lazy = {name: lazy_names(tree) for name, tree in trees.items() if files[name].name == "__init__.py"}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                homes = lazy.get(node.module, {})
                targets = [node.module] + [homes.get(alias.name, f"{node.module}.{alias.name}") for alias in node.names]
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


def test_graph_sees_names_a_lazy_package_loads():
    graph = import_graph()
    assert "jobdb.database" in graph["tasks.results.rebuild"]  # `from jobdb import JobDatabase`


# The layers, lowest first: simulator/ (a stand-in backend: nothing of the project), jobdb/ (the job
# store), tasks/, flows/. A lower layer never imports a higher one. The one exception is a command-line
# entry point (`python -m jobdb stac` runs tasks/results/rebuild.py): it sits above every layer and
# nothing imports it.
ENTRY_POINTS = {"jobdb.__main__"}


def upward_imports(package: str, forbidden: Tuple[str, ...]) -> Dict[str, Set[str]]:
    return {name: {t for t in targets if t.split(".")[0] in forbidden}
            for name, targets in import_graph().items()
            if name.split(".")[0] == package and name not in ENTRY_POINTS
            and any(t.split(".")[0] in forbidden for t in targets)}


def test_jobdb_imports_nothing_from_tasks_or_flows():
    assert upward_imports("jobdb", ("tasks", "flows", "bench", "tests")) == {}
    assert "tasks.results.rebuild" in import_graph()["jobdb.__main__"]  # the exception is still the only one


def test_simulator_imports_nothing_from_the_project():
    assert upward_imports("simulator", ("jobdb", "tasks", "flows", "bench", "tests")) == {}


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
