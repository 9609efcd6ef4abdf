"""Logging: plain lines at a terminal, structured entries in the systemd journal.

Under systemd (``JOURNAL_STREAM`` names our stderr), each record goes to the journal's native
socket with fields (``PRIORITY``, ``LOGGER``, ``CODE_FILE``/``CODE_LINE``, ``AGENT_ID``...) so
``journalctl -u edge-agent PRIORITY=4`` or ``LOGGER=edge_agent.transport.mqtt`` filter them.
The protocol is the journal's documented one (systemd.journal-fields(7), "native protocol"):
``FIELD=value`` lines, or a field name, a newline, a 64-bit little-endian length and the raw
value for values that hold a newline.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                   logging.CRITICAL: 2}


def _field(name: str, value: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    if b"\n" in raw:
        return name.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
    return name.encode() + b"=" + raw + b"\n"


class JournalHandler(logging.Handler):
    def __init__(self, identifier: str = "edge-agent", **fields: str) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.static = b"".join(_field(k.upper(), v) for k, v in
                               {"SYSLOG_IDENTIFIER": identifier, **fields}.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            data = (self.static + _field("MESSAGE", msg)
                    + _field("PRIORITY", str(SYSLOG_PRIORITY.get(record.levelno, 6)))
                    + _field("LOGGER", record.name) + _field("CODE_FILE", record.pathname)
                    + _field("CODE_LINE", str(record.lineno))
                    + _field("CODE_FUNC", record.funcName))
            self.sock.sendto(data, JOURNAL_SOCKET)
        except OSError:
            self.handleError(record)


def under_journal() -> bool:
    """True when stderr is the journal's stream (systemd sets JOURNAL_STREAM=dev:ino)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino) and os.path.exists(JOURNAL_SOCKET)


def setup(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if under_journal():
        handler: logging.Handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("edge-agent: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
