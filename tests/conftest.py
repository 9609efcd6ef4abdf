"""Shared test helpers: where the fixture captures are, and a one-line capture reader."""
from __future__ import annotations

import os
from pathlib import Path

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
