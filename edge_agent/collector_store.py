"""The collector's SQLite store: documents, counters and events, and every agent's chain.

The caller owns the transaction (:meth:`Store.transaction`). Each agent's chain is a
:class:`~edge_agent.summary.chain.ChainVerifier` whose per-summary memory is the ``summaries``
table (:class:`StoredChain`): in memory are a few numbers and the open gaps, persisted with each
summary in the same transaction (``agents``, ``gaps``, ``dropped``), so a restarted collector
carries on where it stopped and several collectors may share one database file (a ``version``
per agent tells a collector that another one moved the chain on). What is stored, and why, is
:mod:`edge_agent.collector`'s to decide; ``events`` keeps the newest ``MAX_EVENTS`` per agent
and name.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.collector_keys import KeyRing
from edge_agent.summary.chain import ChainVerifier, Problem
from edge_agent.summary.sign import load_public_keys, public_jwk

SCHEMA_VERSION = 1
MAX_EVENTS = 1000            # detail rows kept per (agent, name); counters are exact
MAX_EVENT_TOKEN = 64 << 10   # bytes of an offending token kept with its event (forensics)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    min_seq INTEGER,
    max_seq INTEGER,
    fed INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prev TEXT,
    site TEXT NOT NULL,
    kid TEXT NOT NULL,
    window_start REAL,
    window_end REAL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    token TEXT NOT NULL,
    UNIQUE (agent_id, seq)
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    stored_hash TEXT NOT NULL,
    kid TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts REAL,
    hash TEXT NOT NULL UNIQUE,
    kid TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    token TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_agent_kind ON documents (agent_id, kind, id);
CREATE TABLE IF NOT EXISTS status (
    agent_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    state TEXT,
    ts REAL,
    hash TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    agent_id TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (agent_id, lo)
);
CREATE TABLE IF NOT EXISTS dropped (
    agent_id TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (agent_id, lo, hi)
);
CREATE TABLE IF NOT EXISTS counters (
    agent_id TEXT NOT NULL,
    name TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (agent_id, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    agent_id TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER,
    detail TEXT NOT NULL,
    source TEXT NOT NULL,
    token TEXT
);
CREATE INDEX IF NOT EXISTS events_agent_name ON events (agent_id, name, id);
CREATE TABLE IF NOT EXISTS keys (
    kid TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    jwk TEXT NOT NULL,
    file TEXT NOT NULL,
    loaded_at REAL NOT NULL,
    PRIMARY KEY (kid, agent_id)
);
"""


class _SeqIndex(dict):     # type: ignore[type-arg]
    """ChainVerifier's ``by_seq`` (seq -> (hash, prev)) over the summaries table: entries set
    by the verifier wait here until the summary row is written, lookups fall through to SQLite."""

    def __init__(self, db: sqlite3.Connection, agent_id: str) -> None:
        super().__init__()
        self.db = db
        self.agent_id = agent_id

    def __missing__(self, seq: int) -> tuple[str, str | None]:
        row = self.get(seq)
        if row is None:
            raise KeyError(seq)
        return row

    def get(self, seq: int, default: Any = None) -> Any:   # type: ignore[override]
        if dict.__contains__(self, seq):
            return dict.__getitem__(self, seq)
        row = self.db.execute("SELECT hash, prev FROM summaries WHERE agent_id = ? AND seq = ?",
                              (self.agent_id, seq)).fetchone()
        return (row[0], row[1]) if row else default


class StoredChain(ChainVerifier):
    """One agent's chain, restored from and saved to the store (see the module docstring)."""

    def __init__(self, db: sqlite3.Connection, agent_id: str, site: str, min_seq: int | None,
                 max_seq: int | None, fed: int, version: int,
                 gaps: list[tuple[int, int, int]]) -> None:
        super().__init__({}, max_problems=100)
        self.by_seq = _SeqIndex(db, agent_id)
        self.identity = (agent_id, site)
        self.min_seq, self.max_seq, self.index, self.version = min_seq, max_seq, fed, version
        self.missing = [[lo, hi, at] for lo, hi, at in gaps]

    def feed_verified(self, kid: str, body: dict[str, Any], digest: str) -> list[Problem]:
        """:meth:`ChainVerifier.feed` for a summary whose signature was checked already."""
        self.index += 1
        self.counts["summary"] += 1
        if self._same_agent(body, True):
            self._summary(body, digest)
        problems, self.problems = self.problems, []
        self.problem_counts.clear()
        return problems


class Store:
    """The collector's SQLite database (schema above). One connection, one thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent != Path(""):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the broker hears the PUBACK, through a power cut.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.chains: dict[str, StoredChain] = {}
        self._depth = 0
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            version = self.meta("schema_version")
            if version is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
            elif int(version) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema {version} is newer than this "
                                   "collector's")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT; on any error ROLLBACK, and forget the cached chains
        (their state may be ahead of what was kept)."""
        if self._depth:
            yield
            return
        self._depth = 1
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self.chains = {}
            raise
        finally:
            self._depth = 0

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    # --- counting ---------------------------------------------------------------------------

    def count(self, agent_id: str, name: str, n: int = 1) -> None:
        self.db.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (agent_id, name) "
                        "DO UPDATE SET n = n + excluded.n", (agent_id, name, n))

    def event(self, now: float, agent_id: str, name: str, seq: int | None, detail: str,
              source: str, token: str | None = None) -> None:
        self.count(agent_id, name)
        self.db.execute("INSERT INTO events (at, agent_id, name, seq, detail, source, token) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (now, agent_id, name, seq, detail, source,
                         token[:MAX_EVENT_TOKEN] if token else None))
        self.db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE agent_id = ? "
                        "AND name = ? ORDER BY id DESC LIMIT -1 OFFSET ?)",
                        (agent_id, name, MAX_EVENTS))

    # --- agents and chains ------------------------------------------------------------------

    def touch_agent(self, agent_id: str, site: str, now: float) -> None:
        self.db.execute("INSERT INTO agents (agent_id, site, first_seen, last_seen) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
                        "last_seen = max(last_seen, excluded.last_seen)",
                        (agent_id, site, now, now))

    def chain(self, agent_id: str) -> StoredChain:
        """The agent's chain (the agent row must exist), restored when another connection
        moved it on since it was cached."""
        site, min_seq, max_seq, fed, version = self.db.execute(
            "SELECT site, min_seq, max_seq, fed, version FROM agents WHERE agent_id = ?",
            (agent_id,)).fetchone()
        cached = self.chains.get(agent_id)
        if cached is not None and cached.version == version:
            return cached
        gaps = self.db.execute("SELECT lo, hi, at FROM gaps WHERE agent_id = ? ORDER BY lo",
                               (agent_id,)).fetchall()
        chain = StoredChain(self.db, agent_id, site, min_seq, max_seq, fed, version, gaps)
        self.chains[agent_id] = chain
        return chain

    def save_chain(self, chain: StoredChain, before: list[tuple[int, int]]) -> None:
        agent_id = chain.identity[0] if chain.identity else ""
        chain.version += 1
        self.db.execute("UPDATE agents SET min_seq = ?, max_seq = ?, fed = ?, version = ? "
                        "WHERE agent_id = ?", (chain.min_seq, chain.max_seq, chain.index,
                                               chain.version, agent_id))
        after = {(lo, hi): at for lo, hi, at in chain.missing}
        old = set(before)
        for lo, hi in old - set(after):
            self.db.execute("DELETE FROM gaps WHERE agent_id = ? AND lo = ?", (agent_id, lo))
        for lo, hi in set(after) - old:
            self.db.execute("INSERT OR REPLACE INTO gaps VALUES (?, ?, ?, ?)",
                            (agent_id, lo, hi, after[(lo, hi)]))
        if chain.dropped:
            self.add_dropped(agent_id, [(d, d) for d in sorted(chain.dropped)])
            chain.dropped.clear()
        dict.clear(chain.by_seq)

    def add_dropped(self, agent_id: str, ranges: list[tuple[int, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO dropped VALUES (?, ?, ?)",
                            [(agent_id, lo, hi) for lo, hi in ranges])

    def summary(self, agent_id: str, seq: int) -> tuple[str, str] | None:
        """``(hash, source)`` of the stored summary ``seq``."""
        row = self.db.execute("SELECT hash, source FROM summaries WHERE agent_id = ? AND seq = ?",
                              (agent_id, seq)).fetchone()
        return (row[0], row[1]) if row else None

    def add_summary(self, body: dict[str, Any], kid: str, digest: str, token: str, source: str,
                    now: float) -> None:
        window = body["window"] if isinstance(body.get("window"), dict) else {}
        self.db.execute(
            "INSERT INTO summaries (agent_id, seq, hash, prev, site, kid, window_start, "
            "window_end, source, received_at, token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (body["agent_id"], body["seq"], digest, body.get("prev"), body["site"], kid,
             _num(window.get("start")), _num(window.get("end")), source, now, token))

    def add_conflict(self, agent_id: str, seq: int, digest: str, stored: str, kid: str,
                     source: str, now: float, token: str) -> bool:
        """False when this very conflicting token was kept before."""
        cur = self.db.execute("INSERT OR IGNORE INTO conflicts (agent_id, seq, hash, stored_hash, "
                              "kid, source, received_at, token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (agent_id, seq, digest, stored, kid, source, now, token))
        return cur.rowcount == 1

    # --- other documents --------------------------------------------------------------------

    def add_document(self, kind: str, body: dict[str, Any], kid: str, digest: str, token: str,
                     source: str, now: float) -> bool:
        """False when the same token was stored before."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO documents (agent_id, site, kind, ts, hash, kid, source, "
            "received_at, token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (body["agent_id"], body["site"], kind, _num(body.get("ts")), digest, kid, source,
             now, token))
        if cur.rowcount != 1:
            return False
        if kind == "status":
            self._status(body, digest, token, source, now)
        return True

    def _status(self, body: dict[str, Any], digest: str, token: str, source: str,
                now: float) -> None:
        # Live, the newest to arrive wins: the retained last will is signed at the agent's
        # start, so it is older by ts than the "online" it replaces. A bundle's status counts
        # only when newer than what is known.
        row = self.db.execute("SELECT ts FROM status WHERE agent_id = ?",
                              (body["agent_id"],)).fetchone()
        ts = _num(body.get("ts"))
        if row is not None and source != "mqtt" and (ts is None or (row[0] or 0) >= ts):
            return
        state = body.get("state") if isinstance(body.get("state"), str) else None
        self.db.execute("INSERT OR REPLACE INTO status VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (body["agent_id"], body["site"], state, ts, digest, source, now, token))

    # --- keys -------------------------------------------------------------------------------

    def save_keys(self, ring: KeyRing, now: float) -> None:
        """The enrolment in force, so an import or a report can use it without the key dir."""
        self.db.execute("DELETE FROM keys")
        self.db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?)",
                            [(kid, agent, json.dumps(public_jwk(ring.keys[kid])),
                              ring.files.get(kid, ""), now) for agent, kid in ring.enrolled()])

    def load_keys(self) -> KeyRing:
        keys: dict[str, Ed25519PublicKey] = {}
        agents: dict[str, set[str]] = {}
        files: dict[str, str] = {}
        for kid, agent, jwk, path in self.db.execute("SELECT kid, agent_id, jwk, file FROM keys"):
            keys.update(load_public_keys(jwk))
            agents.setdefault(kid, set()).add(agent)
            files[kid] = path
        return KeyRing(keys, {k: frozenset(v) for k, v in agents.items()}, files)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

