"""Guarded imports of engine modules that a build may not contain (the CLI, the model registry,
the benchmarks and the app share this one helper).

`optional("core.objectives.klub")` returns the module, or None when that module (or a package
above it) does not exist. Any other import failure (a bug inside the module, a missing
third-party dependency) propagates, so a broken module is never mistaken for an absent one.
"""
from __future__ import annotations

import importlib

NOT_AVAILABLE = "not available in this build: the module `{}` is missing"


def optional(module: str):
    """The module, or None when `module` or one of its parent packages is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        if e.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            return None
        raise


def optional_attr(module: str, name: str):
    """getattr(optional(module), name) or None when the module is absent."""
    m = optional(module)
    return None if m is None else getattr(m, name)
