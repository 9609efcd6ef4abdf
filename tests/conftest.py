"""Shared test helpers: where the fixture captures are, and a one-line capture reader."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared"))
PCAPS = SHARED / "fixtures" / "pcaps"
BASELINES = SHARED / "fixtures" / "baselines"


def fixture_pcaps(proto: str | None = None) -> list[Path]:
    """Every fixture capture (of one protocol folder), sorted; empty when shared/ is absent."""
    base = PCAPS / proto if proto else PCAPS
    return sorted(p for p in base.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"fixture captures: {PCAPS} ({len(fixture_pcaps())} files)"


def running_summaries(state: Path) -> list[dict[str, Any]]:
    """Summaries a running agent stored so far, read without writing to its spool."""
    from edge_agent.summary.sign import claims
    path = Path(state) / "spool.sqlite"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT doc FROM documents WHERE kind = 'summary'").fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:          # created, but no table yet
        return []
    return [claims(doc) for (doc,) in rows]


def wait_for_agent(proc: subprocess.Popen, log: Callable[[], str], cond: Callable[[], bool],
                   timeout: float, what: str) -> None:
    """Poll ``cond`` until true; fail naming ``what`` if the agent exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"agent exited ({proc.returncode}) before it could {what}:\n{log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"agent did not {what} within {timeout} s:\n{log()}")
        time.sleep(0.05)
