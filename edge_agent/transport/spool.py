"""The local spool: every summary the agent writes, durable, in order, bounded in bytes.

SQLite in WAL mode: one transaction per document, so a SIGKILL or power cut at any moment
leaves either the whole document or none of it, never a torn or doubled one. Sequence numbers
come from the spool itself and so survive restarts. When the spool would pass ``max_bytes`` the
oldest documents are dropped, counted, and their sequence numbers remembered until the next
document can report them.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Spool:
    def __init__(self, path: str | Path, max_bytes: int = 256 << 20, fsync: str = "window") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'window' else 'NORMAL'}")
        with self.db:
            self.db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            elif int(version) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema {version} is newer than this agent's")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def next_seq(self) -> int:
        """The sequence number the next document gets (1 for a new spool)."""
        row = self.db.execute("SELECT max(seq) FROM documents").fetchone()
        last = max(row[0] or 0, int(self._meta("last_seq") or 0))
        return last + 1

    def append(self, seq: int, kind: str, ts: float, doc: str) -> list[int]:
        """Store one document atomically; return the sequence numbers dropped to fit it.

        The document is expected to carry :meth:`pending_dropped`; storing it clears that list
        in the same transaction, so a crash can neither lose nor repeat the report.
        """
        dropped: list[int] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO documents VALUES (?, ?, ?, ?)", (seq, kind, ts, doc))
            self._set_meta("last_seq", seq)
            size = self.size_bytes()
            while size > self.max_bytes:
                row = self.db.execute(
                    "SELECT seq, length(doc) FROM documents WHERE seq < ? ORDER BY seq LIMIT 1",
                    (seq,)).fetchone()
                if row is None:
                    break
                self.db.execute("DELETE FROM documents WHERE seq=?", (row[0],))
                dropped.append(row[0])
                size -= row[1]
            # Bounded so a spool far too small cannot grow this list without end.
            self._set_meta("dropped_unreported", json.dumps(dropped[-10_000:]))
            if dropped:
                self._set_meta("dropped_total",
                               int(self._meta("dropped_total") or 0) + len(dropped))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return dropped

    def pending_dropped(self) -> list[int]:
        """Sequence numbers dropped and not yet reported in a stored document."""
        return json.loads(self._meta("dropped_unreported") or "[]")

    def size_bytes(self) -> int:
        row = self.db.execute("SELECT coalesce(sum(length(doc)), 0) FROM documents").fetchone()
        return int(row[0])

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM documents").fetchone()[0])

    def dropped_total(self) -> int:
        return int(self._meta("dropped_total") or 0)

    def documents(self, since: int = 0, kind: str | None = None) -> Iterator[tuple[int, str]]:
        query = "SELECT seq, doc FROM documents WHERE seq > ?"
        args: tuple = (since,)
        if kind:
            query += " AND kind = ?"
            args += (kind,)
        yield from self.db.execute(query + " ORDER BY seq", args)

    def close(self) -> None:
        self.db.close()
