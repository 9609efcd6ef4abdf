"""The collector at the centre: every agent's signed documents, verified, stored once, chained.

```
MQTT  $share/<group>/<prefix>/+/+/{summary,alert,status,cmd/result} ─┐ (tools/collect.py)
bundles from air-gapped plants (edge-agent export) ───────────────────┤
                                                                      ▼
Collector.ingest: verify JWS against the enrolled keys ─▶ key enrolled for the payload's agent?
  ─▶ topic = payload (site, agent, kind)? ─▶ summary: (agent, seq) stored before? ─▶ chain ─▶ Store
```

Sans-I/O apart from its SQLite store (:mod:`edge_agent.collector_store`): the caller passes the
bytes, the topic and ``now``, and owns the transaction (:meth:`Store.transaction`), so the MQTT
side acknowledges a message to the broker only after the transaction holding it has committed.
The enrolled keys are read by :mod:`edge_agent.collector_keys`.

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

Chains. Each agent's chain is a :class:`~edge_agent.summary.chain.ChainVerifier` kept in the
store (:class:`~edge_agent.collector_store.StoredChain`; that module says how), so a restarted
collector carries on where it stopped and several collectors may share one database file. Gaps
are explained at report time by the ``dropped_seqs`` agents and bundle manifests signed.

Bounds: a token larger than ``MAX_TOKEN`` is rejected unread; ``events`` (details of what was
rejected or flagged, with the token for forensics) keeps the newest ``MAX_EVENTS`` per agent
and name; everything else is counted.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.collector_keys import KeyRing
from edge_agent.collector_store import Store
from edge_agent.summary.chain import ChainVerifier, Problem
from edge_agent.summary.sign import VerifyError, split, token_hash, verify
from edge_agent.transport.export import read_bundle
# Taken from here by tools/collect.py and the tests.
from edge_agent.collector_keys import key_dir_stamp, load_key_dir  # noqa: F401

log = logging.getLogger("edge_agent.collector")

MAX_TOKEN = 4 << 20          # a summary is tens of KiB; anything this big is not one
REPLAY_WINDOW = 100          # > the agents' mqtt.max_inflight (default 20)
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
