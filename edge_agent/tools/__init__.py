"""Sub-commands beyond the core ones in ``cli.py``.

Each module here defines ``register(sub)``, which adds its sub-parser(s) to the ``edge-agent``
command line and sets ``func`` to a function ``(args) -> exit status``. Modules are found by
name, so a new command is one new module. Commands raise ``ConfigError`` (exit 2) for bad
configuration and ``ToolError`` (exit 1, message printed, no traceback) for anything else the
user must fix.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil


class ToolError(Exception):
    """A failure the user can act on; the message is all they need to see."""


def register_all(sub: argparse._SubParsersAction) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
