"""The spool: every document the agent emits, durable, in order, bounded in bytes.

It is also the outbox. A document is written once, with ``published = 0``; the MQTT transport
reads unpublished documents in order and marks them only once the broker has acknowledged them,
and an air-gapped gateway exports from the same table. One table instead of a spool plus an
outbox writes each document once, which matters on an SD card.

SQLite in WAL mode, one transaction per document, so a SIGKILL or power cut at any moment
leaves either the whole document or none of it, never a torn or doubled one. Summary sequence
numbers are kept here and so survive restarts. When the spool would pass ``max_bytes`` the
oldest documents are dropped (published or not), counted, and the dropped summary numbers are
remembered until the next summary reports them. The WAL beside it is bounded too: copied into
the database every ``WAL_PAGES`` pages, and cut back to ``WAL_BYTES`` when something (an export
holding its snapshot) let it grow past that.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1
# SQLite checkpoints every 1000 pages by default: a WAL of 4 MiB beside the spool. A quarter of
# that costs about 2 % more bytes written (a checkpoint copies each page changed since the last
# one once: the documents' pages either way, the few pages every append changes more often).
WAL_PAGES = 256
WAL_BYTES = 2 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    seq INTEGER,
    ts REAL NOT NULL,
    doc TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS documents_unpublished ON documents (published, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Spool:
    def __init__(self, path: str | Path, max_bytes: int = 256 << 20, fsync: str = "window") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        # The MQTT thread reads and acknowledges through its own connection to this file.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit returns once the WAL is on disk, so a stored summary survives a power
        # cut. NORMAL: the WAL reaches the disk at checkpoints; a crash still tears nothing.
        self.db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'window' else 'NORMAL'}")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        self.db.execute(f"PRAGMA journal_size_limit={WAL_BYTES}")
        with self.db:
            self.db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            elif int(version) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema {version} is newer than this agent's")
        size = self._meta("size_bytes")
        # Kept in meta so opening a full spool on an SD card does not read every document.
        self._size = int(size) if size is not None else int(self.db.execute(
            "SELECT coalesce(sum(length(doc)), 0) FROM documents").fetchone()[0])

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: object) -> None:
        # An upsert changes the row in place; INSERT OR REPLACE would delete and insert it,
        # rewriting the key's index page too: one page more on the SD card per summary.
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                        "SET value = excluded.value", (key, str(value)))

    def meta(self, key: str, default: str | None = None) -> str | None:
        value = self._meta(key)
        return default if value is None else value

    def set_meta(self, values: dict[str, object]) -> None:
        """Store several meta entries in one transaction."""
        with self.db:
            for key, value in values.items():
                self._set_meta(key, value)

    def next_seq(self) -> int:
        """The sequence number the next summary gets (1 for a new spool)."""
        return int(self._meta("last_seq") or 0) + 1

    def append(self, kind: str, ts: float, doc: str, seq: int | None = None,
               meta: dict[str, object] | None = None) -> list[int]:
        """Store one document atomically; return the summary numbers dropped to fit it.

        A summary (``seq`` given) is expected to carry :meth:`pending_dropped`; storing it
        clears that list in the same transaction, so a crash can neither lose nor repeat the
        report. ``meta`` entries (a chain head, say) are stored in the same transaction.
        """
        dropped: list[int] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            new_id = self.db.execute(
                "INSERT INTO documents (kind, seq, ts, doc) VALUES (?, ?, ?, ?)",
                (kind, seq, ts, doc)).lastrowid
            size = self._size + len(doc)
            while size > self.max_bytes:
                row = self.db.execute("SELECT id, seq, length(doc) FROM documents "
                                      "ORDER BY id LIMIT 1").fetchone()
                if row[0] == new_id:
                    break            # never drop the document just stored
                self.db.execute("DELETE FROM documents WHERE id=?", (row[0],))
                if row[1] is not None:
                    dropped.append(row[1])
                size -= row[2]
                self._set_meta("dropped_total", int(self._meta("dropped_total") or 0) + 1)
            pending = [] if seq is not None else self.pending_dropped()
            # Bounded so a spool far too small cannot grow this list without end.
            self._set_meta("dropped_unreported", json.dumps((pending + dropped)[-10_000:]))
            if seq is not None:
                self._set_meta("last_seq", seq)
            for key, value in (meta or {}).items():
                self._set_meta(key, value)
            self._set_meta("size_bytes", size)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._size = size
        return dropped

    def pending_dropped(self) -> list[int]:
        """Summary numbers dropped and not yet reported in a stored summary."""
        return json.loads(self._meta("dropped_unreported") or "[]")

    def unpublished(self, limit: int = 100,
                    exclude_kinds: frozenset[str] | set[str] = frozenset()) -> list[tuple[int, str, str]]:
        """The oldest documents not yet acknowledged by the broker: ``(id, kind, doc)``."""
        kinds = sorted(exclude_kinds)
        marks = f" AND kind NOT IN ({','.join('?' * len(kinds))})" if kinds else ""
        return self.db.execute(f"SELECT id, kind, doc FROM documents WHERE published = 0{marks} "
                               "ORDER BY id LIMIT ?", (*kinds, limit)).fetchall()

    def mark_published(self, ids: list[int]) -> None:
        """Acknowledged documents, in one transaction (one fsync, not one per id)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("UPDATE documents SET published = 1 WHERE id = ?",
                                [(i,) for i in ids])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def size_bytes(self) -> int:
        return self._size

    def count(self, unpublished: bool = False) -> int:
        query = "SELECT count(*) FROM documents" + (" WHERE published = 0" if unpublished else "")
        return int(self.db.execute(query).fetchone()[0])

    def dropped_total(self) -> int:
        return int(self._meta("dropped_total") or 0)

    def documents(self, since: int = 0, kind: str | None = None) -> Iterator[tuple[int, str]]:
        """``(seq, doc)`` of summaries after ``since`` or, with ``kind``, ``(id, doc)`` of that kind."""
        if kind is None or kind == "summary":
            yield from self.db.execute("SELECT seq, doc FROM documents WHERE kind = 'summary' "
                                       "AND seq > ? ORDER BY seq", (since,))
        else:
            yield from self.db.execute("SELECT id, doc FROM documents WHERE kind = ? AND id > ? "
                                       "ORDER BY id", (kind, since))

    def close(self) -> None:
        self.db.close()
