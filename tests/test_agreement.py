"""The whole pipeline (capture, reassembly, decoder) against tshark, message by message.

Messages are compared in order per flow direction, since the agent and tshark may interleave
the two directions differently around lost segments. Agreement is the share of tshark's
messages the agent decoded with the same key fields.
"""
from __future__ import annotations

import difflib
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.config import load
from edge_agent.events import to_record
from tests.conftest import fixture_pcaps

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (scripts/setup installs it)")


def agent_records(path: Path, proto: str) -> list[dict]:
    recs: list[dict] = []
    Pipeline(load(), on_event=lambda ev: recs.append(to_record(ev))).run(FileSource([str(path)]))
    return [r for r in recs if r["proto"] == proto and r[proto]]


def tshark_rows(path: Path, display: str, fields: list[str]) -> list[list[list[str]]]:
    """One row per packet: for each field the list of its occurrences."""
    cmd = [TSHARK, "-r", str(path), "-Y", display, "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=|", "-o", "tcp.desegment_tcp_streams:TRUE"]
    for f in ["ip.src", "ipv6.src", "tcp.srcport", "udp.srcport", *fields]:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [[c.split("|") if c else [] for c in line.split("\t")] for line in out.splitlines()]


def agreement(ours: dict, theirs: dict) -> tuple[int, int, list]:
    matched = total = 0
    diffs = []
    for key in theirs.keys() | ours.keys():
        a, b = theirs.get(key, []), ours.get(key, [])
        sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
        matched += sum(m.size for m in sm.get_matching_blocks())
        total += len(a)
        diffs += [(key, a[i1:i2], b[j1:j2]) for op, i1, i2, j1, j2 in sm.get_opcodes()
                  if op != "equal" and i2 > i1]
    return matched, total, diffs


def _int(v: str | None) -> int | None:
    return int(v, 0) if v not in (None, "") else None


@needs_tshark
def test_modbus_agrees_with_tshark() -> None:
    grand = [0, 0]
    for path in fixture_pcaps("modbus"):
        ours: dict = defaultdict(list)
        for r in agent_records(path, "modbus"):
            m = r["modbus"]
            ours[(r["src_ip"], r["src_port"])].append(
                (m.get("transaction_id"), m.get("unit_id"), m.get("func_code"), m.get("exception_code")))
        theirs: dict = defaultdict(list)
        for row in tshark_rows(path, "mbtcp", ["mbtcp.trans_id", "mbtcp.unit_id",
                                               "modbus.func_code", "modbus.exception_code"]):
            src = (row[0] or row[1])[0]
            port = _int((row[2] or row[3])[0])
            tids, units, funcs, excs = row[4:8]
            for i, tid in enumerate(tids):
                func = _int(funcs[i]) if i < len(funcs) else None
                exc = _int(excs[0]) if excs and func is not None and len(tids) == 1 else None
                theirs[(src, port)].append((_int(tid), _int(units[i]),
                                            func & 0x7F if func is not None else None, exc))
        matched, total, diffs = agreement(ours, theirs)
        print(f"{path.name}: {matched}/{total}")
        assert total and matched / total >= 0.995, (path.name, diffs[:5])
        grand[0] += matched
        grand[1] += total
    print(f"modbus overall: {grand[0]}/{grand[1]} = {grand[0] / grand[1]:.2%}")
