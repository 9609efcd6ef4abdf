"""The Python scripts here need the agent's dependencies, which live in the repository's
virtual environment (``.venv``, made by ``scripts/setup``). Started with the system
interpreter (``#!/usr/bin/env python3``), a script runs itself again with ``.venv/bin/python``,
or, when there is no ``.venv``, stops with one line saying to run ``scripts/setup``. Another
virtual environment is used as it is. Each script imports this first, when run as a program:

    if __name__ == "__main__":
        import _venv  # noqa: F401  (with the system python3: runs this again with .venv's)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent.parent / ".venv"
PYTHON = VENV / "bin" / "python"

if sys.prefix == sys.base_prefix:              # the system interpreter, not a virtual environment
    if not PYTHON.exists():
        sys.exit(f"{Path(sys.argv[0]).name}: {VENV} does not exist: run scripts/setup first")
    os.execv(PYTHON, [str(PYTHON), *sys.orig_argv[1:]])      # with its options (-u, -X ...)
