"""Registry entries named as "module:attribute" (or "path/to/file.py:attribute"), imported on first use.

Every registry in aha (stages, rollout engines, the user's own rewards) names its entries this way, so that
a table can list what exists without importing it, and a user can add an entry from their own module
without editing aha. Plain Python: every layer may import it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from aha.errors import AhaError


@functools.cache
def load(target: str) -> Any:
    """The object `target` names: "package.module:attr" (imported with the working folder on the path, as
    `python -m` would find a module beside the user's recipe) or "path/to/file.py:attr". AhaError (one line)
    when the text is malformed, the module cannot be imported or has no such attribute."""
    module, sep, name = target.rpartition(":")
    if not sep or not module or not name:
        raise AhaError(f"want \"module:function\" or \"path/to/file.py:function\", got {target!r}")
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser()
            spec = importlib.util.spec_from_file_location(f"aha_plugin_{path.stem}", path) if path.is_file() else None
            if spec is None or spec.loader is None:
                raise AhaError(f"{module}: file not found")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            mod = importlib.import_module(module)
    except AhaError:
        raise
    except Exception as e:  # noqa: BLE001  (any error in the named module is a one-line configuration error)
        raise AhaError(f"cannot import {module} ({type(e).__name__}: {e})") from None
    if not hasattr(mod, name):
        raise AhaError(f"{module} has no {name}")
    return getattr(mod, name)


def resolve(entry: Any) -> Any:
    """A registry entry: the object itself, or the object a "module:attr" string names."""
    return load(entry) if isinstance(entry, str) else entry
