"""The systemd unit: valid, hardened (exposure ≤ 3.0), limits from the configuration."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from edge_agent.config import validate
from edge_agent.tools.unit import render

ANALYZE = shutil.which("systemd-analyze")


def unit(tmp_path, **service) -> str:
    cfg = validate({"agent": {"state_dir": "/var/lib/edge-agent"}, "service": service})
    return render(cfg, "/etc/edge-agent/agent.toml", "/opt/edge-agent", "edge-agent")


def test_limits_and_capabilities_come_from_the_configuration(tmp_path) -> None:
    text = unit(tmp_path, memory_max_mib=128, cpu_quota_percent=25, watchdog_s=20)
    assert "MemoryMax=128M" in text and "CPUQuota=25%" in text and "WatchdogSec=20" in text
    assert re.search(r"^AmbientCapabilities=CAP_NET_RAW$", text, re.M)
    assert re.search(r"^CapabilityBoundingSet=CAP_NET_RAW$", text, re.M)
    assert "ReadWritePaths=/var/lib/edge-agent" in text and "NoNewPrivileges=yes" in text


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_exposure_is_at_most_3(tmp_path) -> None:
    path = tmp_path / "edge-agent.service"
    path.write_text(unit(tmp_path))
    out = subprocess.run([ANALYZE, "security", "--offline=true", str(path)],
                         capture_output=True, text=True).stdout
    score = float(re.search(r"Overall exposure level for edge-agent.service: ([\d.]+)", out)[1])
    print(f"systemd exposure {score}")
    assert score <= 3.0
