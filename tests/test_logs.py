"""Structured journal entries: the native protocol, read back from a real datagram socket."""
from __future__ import annotations

import logging
import socket
import struct

from edge_agent import logs


def test_journal_entries_carry_fields_and_multiline_messages(tmp_path, monkeypatch) -> None:
    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(path))
    handler = logs.JournalHandler(agent_id="gw-1")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("edge_agent.test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("broker refused: %s", "bad certificate")
        log.error("two\nlines")
    finally:
        log.removeHandler(handler)
    first = server.recv(65536)
    assert b"MESSAGE=broker refused: bad certificate\n" in first
    assert b"PRIORITY=4\n" in first and b"LOGGER=edge_agent.test\n" in first
    assert b"AGENT_ID=gw-1\n" in first and b"SYSLOG_IDENTIFIER=edge-agent\n" in first
    second = server.recv(65536)
    assert b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n" in second
    assert b"PRIORITY=3\n" in second
