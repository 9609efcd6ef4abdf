"""The collector at the centre: every agent's signed documents, verified, stored once, chained.

```
MQTT  $share/<group>/<prefix>/+/+/{summary,alert,status,cmd/result} ─┐ (tools/collect.py)
bundles from air-gapped plants (edge-agent export) ───────────────────┤
                                                                      ▼
Collector.ingest: verify JWS against the enrolled keys ─▶ key enrolled for the payload's agent?
  ─▶ topic = payload (site, agent, kind)? ─▶ summary: (agent, seq) stored before? ─▶ chain ─▶ Store
```

Sans-I/O apart from its SQLite store: the caller passes the bytes, the topic and ``now``, and
owns the transaction (:meth:`Store.transaction`), so the MQTT side acknowledges a message to
the broker only after the transaction holding it has committed.

Outcomes, counted per agent in ``counters`` under these names:

- stored; ``duplicate``: the same token again (QoS 1 redelivery, an agent's in-flight window
  re-sent after a crash, a bundle overlapping what MQTT brought), dropped;
- rejected, never stored: the :class:`~edge_agent.summary.sign.VerifyError` reasons
  (``malformed``, ``bad_header``, ``unsupported_alg``, ``unknown_kid``, ``bad_signature``),
  ``wrong_agent_key`` (signed by a key enrolled for another agent), ``topic_mismatch`` (the
  topic's site, agent or kind is not the payload's), ``mixed_agents`` (a bundle or an agent
  record naming another site or agent), ``replay`` (a summary already stored, re-sent over MQTT
  long after: more than ``replay_window`` summaries behind the newest);
- stored but flagged: ``reorder`` (a missing summary arriving late), ``broken_chain`` (``prev``
  is not the hash of the summary before); ``conflict``: a different token for a stored
  ``(agent, seq)``, kept aside in ``conflicts``, never replacing the first;
- per bundle: ``truncation``, ``manifest_mismatch``; a late summary from a bundle is ``filled``
  (filling gaps is what bundles are for), not a reorder.

Why the replay window: QoS 1 re-sends only the newest documents (an agent resends at most its
``mqtt.max_inflight`` window after a restart), and a bundle legitimately repeats what MQTT
delivered, so only an MQTT copy (not a broker redelivery, DUP) of an old summary that MQTT
delivered before is a replay.

Chains. Each agent's chain is a :class:`~edge_agent.summary.chain.ChainVerifier` whose
per-summary memory is the ``summaries`` table (:class:`StoredChain`): in memory are a few
numbers and the open gaps, persisted with each summary in the same transaction (``agents``,
``gaps``, ``dropped``), so a restarted collector carries on where it stopped and several
collectors may share one database file (a ``version`` per agent tells a collector that
another one moved the chain on). Gaps are explained at report time by the ``dropped_seqs``
agents and bundle manifests signed.

Bounds: a token larger than ``MAX_TOKEN`` is rejected unread; ``events`` (details of what was
rejected or flagged, with the token for forensics) keeps the newest ``MAX_EVENTS`` per agent
and name; everything else is counted.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.summary.chain import ChainVerifier, Problem
from edge_agent.summary.sign import (
    VerifyError,
    load_public_keys,
    public_jwk,
    split,
    token_hash,
    verify,
)
from edge_agent.transport.export import read_bundle

log = logging.getLogger("edge_agent.collector")

SCHEMA_VERSION = 1
MAX_TOKEN = 4 << 20          # a summary is tens of KiB; anything this big is not one
MAX_EVENTS = 1000            # detail rows kept per (agent, name); counters are exact
MAX_EVENT_TOKEN = 64 << 10   # bytes of an offending token kept with its event (forensics)
REPLAY_WINDOW = 100          # > the agents' mqtt.max_inflight (default 20)
KEY_SUFFIXES = (".pem", ".pub", ".jwk", ".jwks", ".json")
# Topic suffix (mqtt.KIND_TOPICS) <-> document kind (the payload's "type").
TOPIC_KINDS = {"summary": "summary", "alert": "alert", "status": "status",
               "cmd/result": "cmd_result"}
KINDS = frozenset(TOPIC_KINDS.values())

REJECTS = ("malformed", "bad_header", "unsupported_alg", "unknown_kid", "bad_signature",
           "wrong_agent_key", "topic_mismatch", "mixed_agents", "replay")
FLAGS = ("conflict", "broken_chain", "reorder", "truncation", "manifest_mismatch")
# An import exits 1 on these (a late summary or a gap is what a bundle is expected to bring).
IMPORT_PROBLEMS = frozenset(REJECTS) | {"conflict", "broken_chain", "truncation",
                                        "manifest_mismatch"}

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


# --- enrolled keys ----------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyRing:
    """The enrolled public keys: by RFC 7638 kid, each with the agent(s) it is enrolled for."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    agents: dict[str, frozenset[str]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)          # kid -> where it came from
    errors: tuple[str, ...] = ()

    def for_agent(self, agent_id: str | None) -> dict[str, Ed25519PublicKey]:
        return {kid: k for kid, k in self.keys.items() if agent_id in self.agents[kid]}

    def enrolled(self) -> list[tuple[str, str]]:
        """``(agent_id, kid)`` pairs, sorted."""
        return sorted((a, kid) for kid, agents in self.agents.items() for a in agents)


def _agent_of(path: Path) -> str | None:
    name = path.name
    for suffix in KEY_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return None


def key_files(directory: str | Path) -> Iterator[tuple[str, Path]]:
    """``(agent_id, file)``: ``DIR/<agent_id>.<pem|pub|jwk|jwks|json>`` and every such file in
    ``DIR/<agent_id>/`` (for several keys per agent, e.g. during a key rotation)."""
    root = Path(directory)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for sub in sorted(entry.iterdir()):
                if sub.is_file() and not sub.name.startswith(".") and _agent_of(sub):
                    yield entry.name, sub
        elif entry.is_file():
            agent = _agent_of(entry)
            if agent:
                yield agent, entry


def key_dir_stamp(directory: str | Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a key file is added, removed or rewritten."""
    try:
        return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                     for _, p in key_files(directory))
    except OSError:
        return ()


def load_key_dir(directory: str | Path) -> KeyRing:
    """Every key under ``directory`` (see :func:`key_files`); a file that cannot be read is
    named in ``errors`` and skipped. OSError if the directory itself cannot be read."""
    keys: dict[str, Ed25519PublicKey] = {}
    agents: dict[str, set[str]] = {}
    files: dict[str, str] = {}
    errors: list[str] = []
    for agent, path in key_files(directory):
        try:
            found = load_public_keys(path)
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
            continue
        for kid, key in found.items():
            keys[kid] = key
            agents.setdefault(kid, set()).add(agent)
            files.setdefault(kid, str(path))
    for kid, names in agents.items():
        if len(names) > 1:
            errors.append(f"kid {kid} is enrolled for several agents ({', '.join(sorted(names))}): "
                          "a cloned device key?")
    return KeyRing(keys, {k: frozenset(v) for k, v in agents.items()}, files, tuple(errors))


# --- outcomes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What became of one message: ``action`` stored, duplicate, rejected or conflict."""

    action: str
    agent_id: str
    kind: str | None = None
    seq: int | None = None
    reason: str | None = None                 # why it was rejected
    flags: tuple[str, ...] = ()               # stored, but: reorder, broken_chain, gap, filled
    detail: str = ""


@dataclass
class ImportResult:
    path: str
    agent_id: str | None
    site: str | None
    actions: Counter[str] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)      # rejects and flags by name
    problems: list[Problem] = field(default_factory=list)     # bundle-level

    @property
    def ok(self) -> bool:
        return not any(n in IMPORT_PROBLEMS for n in self.names)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "agent_id": self.agent_id, "site": self.site, "ok": self.ok,
                "documents": sum(self.actions.values()), "actions": dict(self.actions),
                "problems": dict(self.names),
                "bundle_problems": [p.as_dict() for p in self.problems]}


# --- the store --------------------------------------------------------------------------------

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


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _peek(token: str) -> dict[str, Any]:
    """The claims of a token that failed verification, for the counters only."""
    try:
        body = json.loads(split(token)[1])
    except (VerifyError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def parse_topic(topic: str, prefix: str) -> tuple[str, str, str] | None:
    """``(site, agent_id, kind)`` of ``<prefix>/<site>/<agent_id>/<suffix>``, else None."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in TOPIC_KINDS:
        return None
    return parts[0], parts[1], TOPIC_KINDS[parts[2]]


# --- the collector ----------------------------------------------------------------------------

class Collector:
    """Classifies and stores documents; the caller holds a :meth:`Store.transaction`."""

    def __init__(self, store: Store, keys: KeyRing, prefix: str = "edge-agent",
                 replay_window: int = REPLAY_WINDOW) -> None:
        self.store = store
        self.prefix = prefix
        self.replay_window = replay_window
        self.set_keys(keys)

    def set_keys(self, keys: KeyRing) -> None:
        self.keys = keys

    def ingest(self, data: bytes | str, now: float, topic: str | None = None,
               source: str = "mqtt", redelivered: bool = False,
               expect: tuple[str | None, str | None] | None = None) -> Outcome:
        """One message from ``topic`` (MQTT) or one line of a bundle whose manifest names
        ``expect`` = (agent_id, site). ``redelivered``: the broker's DUP flag."""
        claimed = parse_topic(topic, self.prefix) if topic is not None else None
        owner = claimed[1] if claimed else (expect[0] if expect and expect[0] else "")
        if topic is not None and claimed is None:
            return self._reject(owner, "malformed", f"topic {topic!r} is not "
                                f"{self.prefix}/<site>/<agent>/<kind>", now, source)
        if len(data) > MAX_TOKEN:
            return self._reject(owner, "malformed", f"{len(data)} bytes, more than {MAX_TOKEN}",
                                now, source)
        if isinstance(data, bytes):
            try:
                token = data.decode("ascii")
            except UnicodeDecodeError:
                return self._reject(owner, "malformed", "not ASCII", now, source)
        else:
            token = data
        try:
            header, payload = verify(token, self.keys.keys)
        except VerifyError as exc:
            claims = _peek(token)
            claimed_agent = claims.get("agent_id")
            who = owner or (claimed_agent if isinstance(claimed_agent, str) else "")
            seq = claims["seq"] if _is_seq(claims.get("seq")) else None
            return self._reject(who, exc.reason, exc.detail, now, source, token, seq)
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        agent = body.get("agent_id") if isinstance(body, dict) else None
        site = body.get("site") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(agent, str) or not isinstance(site, str):
            return self._reject(owner, "malformed", "payload is not a JSON object with "
                                "agent_id and site", now, source, token)
        kind = body.get("type")
        if kind is None and "seq" in body:
            kind = "summary"
        seq = body.get("seq") if kind == "summary" and _is_seq(body.get("seq")) else None
        owner = owner or agent
        if kind not in KINDS:
            return self._reject(owner, "malformed", f"unknown document type {kind!r}", now,
                                source, token)
        kid = header["kid"]
        if agent not in self.keys.agents.get(kid, ()):
            return self._reject(owner, "wrong_agent_key", f"{kind} of {agent} signed by kid "
                                f"{kid}, enrolled for {', '.join(sorted(self.keys.agents[kid]))}",
                                now, source, token, seq)
        if claimed and claimed != (site, agent, kind):
            return self._reject(owner, "topic_mismatch", f"{kind} of {agent}@{site} published "
                                f"on {topic}", now, source, token, seq)
        if expect and (expect[0], expect[1]) != (agent, site):
            return self._reject(owner, "mixed_agents", f"{kind} of {agent}@{site} in a bundle "
                                f"of {expect[0]}@{expect[1]}", now, source, token, seq)
        digest = token_hash(token)
        self.store.touch_agent(agent, site, now)
        if kind == "summary":
            return self._summary(body, kid, digest, token, now, source, redelivered)
        if not self.store.add_document(kind, body, kid, digest, token, source, now):
            self.store.count(agent, "duplicate")
            return Outcome("duplicate", agent, kind)
        return Outcome("stored", agent, kind)

    def _reject(self, agent: str, reason: str, detail: str, now: float, source: str,
                token: str | None = None, seq: int | None = None) -> Outcome:
        self.store.event(now, agent, reason, seq, detail, source, token)
        return Outcome("rejected", agent, None, seq, reason, detail=detail)

    def _summary(self, body: dict[str, Any], kid: str, digest: str, token: str, now: float,
                 source: str, redelivered: bool) -> Outcome:
        agent, raw_seq, prev = body["agent_id"], body.get("seq"), body.get("prev")
        if (not isinstance(raw_seq, int) or not _is_seq(raw_seq)
                or not (prev is None or isinstance(prev, str))):
            return self._reject(agent, "malformed", "summary without a valid seq and prev",
                                now, source, token)
        seq = raw_seq
        chain = self.store.chain(agent)
        stored = self.store.summary(agent, seq)
        if stored is not None:
            if stored[0] == digest:
                behind = (seq if chain.max_seq is None else chain.max_seq) - seq
                if (source == "mqtt" and stored[1] == "mqtt" and not redelivered
                        and behind >= self.replay_window):
                    return self._reject(agent, "replay", f"summary {seq} again, {behind} behind "
                                        f"the newest ({chain.max_seq})", now, source, token, seq)
                self.store.count(agent, "duplicate")
                return Outcome("duplicate", agent, "summary", seq)
            if self.store.add_conflict(agent, seq, digest, stored[0], kid, source, now, token):
                self.store.event(now, agent, "conflict", seq, f"a different summary {seq} "
                                 f"(stored {stored[0][:16]}..., this {digest[:16]}...)", source)
                return Outcome("conflict", agent, "summary", seq, flags=("conflict",))
            self.store.count(agent, "duplicate")
            return Outcome("duplicate", agent, "summary", seq, flags=("conflict",))
        before = [(lo, hi) for lo, hi, _ in chain.missing]
        problems = chain.feed_verified(kid, body, digest)
        if not dict.__contains__(chain.by_seq, seq):        # the chain would not take it
            self.store.chains.pop(agent, None)               # fed/index moved: re-read it
            p = problems[0] if problems else Problem("malformed", "not a summary")
            return self._reject(agent, p.name, p.detail, now, source, token, seq)
        self.store.add_summary(body, kid, digest, token, source, now)
        flags = []
        for p in problems:
            name = "filled" if p.name == "reorder" and source != "mqtt" else p.name
            flags.append(name)
            if name == "filled":
                self.store.count(agent, name)
            else:
                self.store.event(now, agent, name, p.seq, p.detail, source)
        opened = [(lo, hi) for lo, hi, _ in chain.missing if (lo, hi) not in before
                  and not any(a <= lo and hi <= b for a, b in before)]
        for lo, hi in opened:
            flags.append("gap")
            log.warning("collector: %s: summaries %d..%d missing (summary %d came after %d); "
                        "if they do not arrive, fill the gap from the agent: edge-agent export "
                        "--since %d, then collect --import", agent, lo, hi, seq, lo - 1, lo - 1)
        self.store.save_chain(chain, before)
        return Outcome("stored", agent, "summary", seq, flags=tuple(flags))

    # --- bundles ----------------------------------------------------------------------------

    def import_bundle(self, path: str | Path, now: float, batch: int = 1000) -> ImportResult:
        """Every document of a bundle through :meth:`ingest`, and the bundle itself checked
        against its signed manifest (truncation, manifest_mismatch) with a ChainVerifier of its
        own. Commits every ``batch`` documents. BundleError if it is not a bundle."""
        bundle = read_bundle(path)
        m = bundle.manifest
        agent = m.get("agent_id") if isinstance(m.get("agent_id"), str) else None
        site = m.get("site") if isinstance(m.get("site"), str) else None
        result = ImportResult(str(path), agent, site)
        source = f"bundle:{Path(path).name}"
        checker = ChainVerifier(self.keys.for_agent(agent))
        manifest = checker.manifest(bundle.manifest_token)
        docs = bundle.documents()
        done = False
        while not done:
            with self.store.transaction():
                if manifest is None and not result.problems:
                    p = checker.problems[-1]
                    result.problems.append(p)
                    result.names[p.name] += 1
                    self.store.event(now, agent or "", p.name, None, p.detail, source,
                                     bundle.manifest_token)
                for _ in range(batch):
                    token = next(docs, None)
                    if token is None:
                        done = True
                        break
                    checker.feed(token)
                    out = self.ingest(token, now, source=source, expect=(agent, site))
                    result.actions[out.action] += 1
                    for name in ([out.reason] if out.reason else []) + list(out.flags):
                        result.names[name] += 1
                if done:
                    self._bundle_checks(bundle, checker, manifest, agent or "", now, source,
                                        result)
        return result

    def _bundle_checks(self, bundle: Any, checker: ChainVerifier,
                       manifest: dict[str, Any] | None, agent: str, now: float, source: str,
                       result: ImportResult) -> None:
        if bundle.complete is False:
            checker.problem("truncation", "the last line is cut short (no newline)", None,
                            checker.index)
        verdict = checker.finish(manifest, bundle.documents_sha256)
        for name in ("truncation", "manifest_mismatch"):     # once per bundle, all said
            found = [p for p in verdict.problems if p.name == name]
            if found:
                p = Problem(name, "; ".join(p.detail for p in found),
                            next((p.seq for p in found if p.seq is not None), None))
                result.problems.append(p)
                result.names[name] += 1
                self.store.event(now, agent, name, p.seq, p.detail, source)
        if manifest is not None and agent:
            ranges = [(r[0], r[1]) for r in manifest.get("dropped_seqs") or []
                      if isinstance(r, list) and len(r) == 2 and _is_seq(r[0]) and _is_seq(r[1])]
            self.store.add_dropped(agent, ranges)
