"""Loading a user's callable (a hook, a `start_job`) from its import path, and checking it can be called as a hook.

No Prefect here: the command line checks hooks before Prefect starts (flows/config/preflight.py).
"""
from __future__ import annotations

import inspect
import pkgutil
from typing import Any, Callable

HOOK_ARGUMENTS = ("job_id", "row", "job_dir", "connection")


def resolve(spec: str) -> Any:
    """The object an import path `"package.module:name"` names (the standard library's
    `pkgutil.resolve_name`); ValueError with a clear reason otherwise."""
    module_name, sep, attribute = str(spec).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r} is not an import path of the form 'package.module:function'")
    try:
        return pkgutil.resolve_name(spec)
    except ImportError as exc:
        raise ValueError(f"{spec!r}: module {module_name!r} cannot be imported: {exc}") from exc
    except AttributeError:
        raise ValueError(f"{spec!r}: {module_name!r} has no attribute {attribute!r}") from None
    except ValueError:
        raise ValueError(f"{spec!r} is not an import path of the form 'package.module:function'") from None


def load_hook(spec: str) -> Callable[..., Any]:
    """The hook an import path names; ValueError with a clear reason otherwise."""
    target = resolve(spec)
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    try:
        inspect.signature(target).bind(*HOOK_ARGUMENTS)
    except TypeError as exc:
        raise ValueError(f"{spec!r} cannot be called as hook(job_id, row, job_dir, connection): {exc}") from None
    except ValueError:
        pass  # builtins without a signature: nothing to check
    return target
