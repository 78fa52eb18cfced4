"""A start_job callback with a bug, as a user might write one: every row raises the same KeyError."""
from __future__ import annotations


def key_error(row, connection, provider, **kwargs):
    return row["no_such_column"] if "no_such_column" in row else {}["no_such_column"]
