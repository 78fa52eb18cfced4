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
