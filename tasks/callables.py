"""Loading a user's hook from its import path, and checking it can be called as a hook.

No Prefect here: the command line checks hooks before Prefect starts (flows/config/preflight.py).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

HOOK_ARGUMENTS = ("job_id", "row", "job_dir", "connection")


def load_hook(spec: str) -> Callable[..., Any]:
    """The callable an import path names; ValueError with a clear reason otherwise."""
    module_name, sep, attribute = str(spec).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r} is not an import path of the form 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{spec!r}: module {module_name!r} cannot be imported: {exc}") from exc
    try:
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ValueError(f"{spec!r}: {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    try:
        inspect.signature(target).bind(*HOOK_ARGUMENTS)
    except TypeError as exc:
        raise ValueError(f"{spec!r} cannot be called as hook(job_id, row, job_dir, connection): {exc}") from None
    except ValueError:
        pass  # builtins without a signature: nothing to check
    return target
