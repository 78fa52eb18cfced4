"""The guarantee table in tests/README.md names tests that exist (found by parsing the test files)."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
NODE_ID = re.compile(r"tests/[\w/]+\.py::[\w:]+")
AREAS = ("interruption", "quota", "store", "outcome")


def table_rows(text: str) -> List[List[str]]:
    """The cells of every body row of the markdown table that has the header `| guarantee | test |`."""
    rows, in_table = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            in_table = False
        elif [c.lower() for c in cells[:2]] == ["guarantee", "test"]:
            in_table = True
        elif in_table and not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return rows


def defined_tests(path: Path) -> Set[str]:
    """`test_x` and `TestClass::test_y` names defined in a test file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


def missing_node_ids(rows: List[List[str]]) -> List[str]:
    defined: Dict[str, Set[str]] = {}
    missing = []
    for row in rows:
        for node_id in NODE_ID.findall(" ".join(row[1:])):
            file, _, name = node_id.partition("::")
            path = ROOT / file
            if file not in defined:
                defined[file] = defined_tests(path) if path.exists() else set()
            if name.split("[")[0] not in defined[file]:
                missing.append(node_id)
    return missing


def is_slow(marker: ast.AST) -> bool:
    """`pytest.mark.slow` (or a list holding it, as a module's `pytestmark`)."""
    if isinstance(marker, (ast.List, ast.Tuple)):
        return any(is_slow(item) for item in marker.elts)
    return isinstance(marker, ast.Attribute) and marker.attr == "slow"


def slow_tests(path: Path) -> Set[str]:
    """The tests of a file the default run leaves out (`-m 'not slow'`): marked slow, or in a slow file."""
    tree = ast.parse(path.read_text())
    whole_file = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
                     and is_slow(node.value) for node in tree.body)
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (whole_file or any(is_slow(d) for d in node.decorator_list))}


def guarantees_only_slow_tests_check(rows: List[List[str]]) -> List[str]:
    """Guarantees whose every test is marked slow: the default run would not check them."""
    slow: Dict[str, Set[str]] = {}
    unchecked = []
    for row in rows:
        node_ids = NODE_ID.findall(" ".join(row[1:]))
        for node_id in node_ids:
            file = node_id.partition("::")[0]
            if file not in slow:
                slow[file] = slow_tests(ROOT / file) if (ROOT / file).exists() else set()
        if node_ids and all(n.partition("::")[2].split("[")[0] in slow[n.partition("::")[0]] for n in node_ids):
            unchecked.append(row[0])
    return unchecked


def test_every_guarantee_has_a_test_in_the_default_run():
    """Long variants are marked slow and left out of the default run; each guarantee keeps a fast test there."""
    rows = table_rows((ROOT / "tests" / "README.md").read_text())
    assert guarantees_only_slow_tests_check(rows) == []


def test_the_check_sees_slow_marks():
    rows = table_rows("| guarantee | test |\n|---|---|\n"
                      "| interruption: x | `tests/test_interruptions.py::test_prefect_server_outage_of_forty_seconds` |\n"
                      "| interruption: y | `tests/test_interruptions.py::test_prefect_server_outage_of_forty_seconds`, "
                      "`tests/test_interruptions.py::test_the_cli_run_survives_its_prefect_server_being_killed` |\n")
    assert guarantees_only_slow_tests_check(rows) == ["interruption: x"]


def test_every_node_id_in_the_guarantee_table_exists():
    rows = table_rows((ROOT / "tests" / "README.md").read_text())
    assert len(rows) >= 20, "the guarantee table is missing or nearly empty"
    assert [row for row in rows if not NODE_ID.search(" ".join(row[1:]))] == []  # each names a test
    assert missing_node_ids(rows) == []
    guarantees = " ".join(row[0].lower() for row in rows)
    assert [area for area in AREAS if area not in guarantees] == []


def test_the_check_catches_a_renamed_test():
    rows = table_rows("| guarantee | test |\n|---|---|\n| store: x | `tests/test_job_db.py::test_no_such_test` |\n"
                      "| store: y | `tests/test_job_db.py::test_create_on_exists` |\n")
    assert missing_node_ids(rows) == ["tests/test_job_db.py::test_no_such_test"]
