"""``edge-agent status`` against a live agent, and the systemd notifications it sends."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.tools.status import assess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")


def status(state: Path) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "status", "--json",
                           "--state-dir", str(state)], capture_output=True, text=True)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}


def test_live_agent_is_healthy_then_stopped_and_talks_to_systemd(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    # Loopback, filtered to a port nothing uses: a live capture that sees nothing.
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--interface", "lo",
                              "--state-dir", str(tmp_path), "--window", "1", "-q"],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        messages = []
        deadline = time.monotonic() + 15
        while "WATCHDOG=1" not in messages and time.monotonic() < deadline:
            messages.append(sock.recv(256).decode())
        assert messages[:2] == ["READY=1", "WATCHDOG=1"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rc, st = status(tmp_path)
            if rc == 0 and st.get("windows", 0) >= 1:
                break
            time.sleep(0.3)
        assert rc == 0 and st["healthy"] and st["pid"] == agent.pid
        assert st["capture"]["dropped"] == 0 and st["broker"] is None
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
    assert agent.returncode == 0, agent.stderr.read()
    sock.setblocking(False)
    rest = []
    while True:
        try:
            rest.append(sock.recv(256).decode())
        except BlockingIOError:
            break
    assert rest[-1] == "STOPPING=1"
    rc, st = status(tmp_path)
    assert rc == 1 and st["problems"] == ["not running (stopped cleanly)"]
    sock.close()


def test_assess_names_each_problem() -> None:
    now = 1000.0
    fresh = {"updated": now, "refresh_s": 5, "pid": os.getpid(),
             "capture": {"received": 1000, "dropped": 0}, "broker": {"state": "connected"}}
    assert assess(fresh, now) == []
    assert "not responding" in assess({**fresh, "updated": now - 60}, now)[0]
    assert "capture drops" in assess({**fresh, "capture": {"received": 900, "dropped": 100}}, now)[0]
    assert "broker refused" in assess({**fresh, "broker": {"state": "refused", "last_error": "x"}}, now)[0]
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert "is gone" in assess({**fresh, "pid": gone.pid}, now)[0]
