"""`load_object("MODULE:OBJ", what)`: the object a command-line spec names.

Shared by the server (`--handlers`) and the CLI (`tidings worker MODULE:OBJ`). Standard
library only, so either side may import it.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["load_object"]


def load_object(spec: str, what: str) -> object:
    """Import `MODULE` and return its attribute `OBJ`.

    `what` names the spec in the error (e.g. "handlers"). The current directory is put on
    `sys.path` first, so a module next to where the command runs is found.

    Raises:
        ValueError: the spec is not `MODULE:OBJ`, or the module or attribute cannot be
            loaded; the message says which and what to write.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: write MODULE:OBJ, e.g. myapp.jobs:worker")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {spec!r}: cannot load it: {exc}") from exc
    return obj
