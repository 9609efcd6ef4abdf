"""``edge-agent status``: the running agent's health, from the status file it refreshes.

Exit 0 when healthy, 1 when not (not running, not responding, dropping packets, broker
refusing us), so monitoring (Nagios-style checks, systemd timers) can use it as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.service import STATUS_FILE
from edge_agent.tools import ToolError

DROP_RATIO = 0.01            # more than 1 % of packets lost by the capture is unhealthy
BAD_BROKER = frozenset({"refused", "tls_error", "unreachable", "disconnected"})


def assess(status: dict[str, Any], now: float) -> list[str]:
    """What is wrong, in words; empty when healthy."""
    problems = []
    if status.get("stopped"):
        return ["not running (stopped cleanly)"]
    age = now - float(status.get("updated", 0))
    if age > 3 * float(status.get("refresh_s", 5)) + 5:
        problems.append(f"not responding: status last refreshed {age:.0f} s ago")
    pid = status.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            problems.append(f"not running: process {pid} is gone")
        except PermissionError:
            pass                                # running as another user: alive
    cap = status.get("capture") or {}
    seen = cap.get("received", 0) + cap.get("dropped", 0)
    if seen and cap.get("dropped", 0) / seen > DROP_RATIO:
        problems.append(f"capture drops {cap['dropped']} of {seen} packets")
    broker = status.get("broker")
    if broker and broker.get("state") in BAD_BROKER:
        problems.append(f"broker {broker['state']}: {broker.get('last_error') or ''}".rstrip(": "))
    return problems


def render(status: dict[str, Any], problems: list[str]) -> str:
    cap = status.get("capture") or {}
    broker = status.get("broker")
    model = status.get("model") or {}
    last = status.get("last_finding")
    lines = [
        f"{'HEALTHY' if not problems else 'UNHEALTHY'}: agent {status.get('agent_id')} at site "
        f"{status.get('site')} (pid {status.get('pid')}, version {status.get('version')})",
        f"  uptime      {status.get('uptime_s', 0):.0f} s",
        f"  packets     {status.get('packets', 0)} (received {cap.get('received', 0)}, "
        f"dropped {cap.get('dropped', 0)}, dropped by interface {cap.get('if_dropped', 0)})",
        f"  windows     {status.get('windows', 0)}",
        f"  outbox      {status.get('outbox_depth') if broker else 'no broker (air-gapped)'}",
        f"  broker      {broker.get('state') if broker else '-'}",
        f"  model       {model.get('name', '-') if model else '-'} {model.get('version', '') if model else ''}",
        f"  baseline    {(status.get('detection') or {}).get('baseline_rules', '-')}",
        f"  last finding {last['severity']} {last['rule']} {last.get('src_ip') or ''} -> "
        f"{last.get('dest_ip') or ''}" if last else "  last finding none",
    ]
    lines += [f"  problem: {p}" for p in problems]
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.cli import _config
    cfg = _config(args)
    path = Path(cfg["agent"]["status_file"] or Path(cfg["agent"]["state_dir"]) / STATUS_FILE)
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolError(f"not running: no status file at {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None
    problems = assess(status, time.time())
    if args.json:
        json.dump({**status, "healthy": not problems, "problems": problems}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(status, problems))
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the running agent's health (exit 1 when unhealthy)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration")
    p.add_argument("--state-dir", metavar="DIR", help="state directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
