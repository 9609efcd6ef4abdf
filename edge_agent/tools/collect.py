"""``edge-agent collect``: the centre's collector (see :mod:`edge_agent.collector`).

```
edge-agent collect --broker URL --keys DIR --db FILE    live, from MQTT
edge-agent collect --import BUNDLE... [--keys DIR] --db FILE
edge-agent collect --report --db FILE [--json]
```

Live, it subscribes at QoS 1 to ``<prefix>/+/+/{summary,alert,status,cmd/result}``, with MQTT 5
as the shared subscription ``$share/<group>/...`` so that collectors of one group split the
messages behind one broker or a cluster (MQTT 3.1.1 has no shared subscriptions: there it is a
plain one, and every collector gets everything). The session is persistent (a stable client
id, ``clean_start`` off, ``--session-expiry``), so the broker keeps what arrives while the
collector is down.

Acknowledged only once stored: paho runs with ``manual_ack``; its network thread only queues
each message, the main thread verifies and stores a batch in one SQLite transaction and, once
it has committed, sends the PUBACKs (``client.ack``). A crash before the commit leaves the
messages unacknowledged in the broker's session, which sends them again; one after the commit
and before the PUBACKs makes them come again as duplicates, dropped by hash. A message of an
earlier connection is not acknowledged on a later one (its packet id may name another message
there); the broker redelivers it.

Enrolled keys are reloaded on SIGHUP and when the files under ``--keys`` change (polled, taken
once they held still for a poll); a reload that finds no key keeps the keys in force.

Brokers differ on shared subscriptions. mosquitto 2.0 keeps a persistent session's queued
messages over a restart but not its *shared* subscriptions: until the collector reconnects
and subscribes again (at once, with a backoff of at most ``RECONNECT_MAX_S``), what agents
publish matches no subscriber and is dropped, and the agents hear PUBACK 0x10 (no matching
subscribers). The collector sees the hole as an unexplained gap; ``edge-agent export --since``
at the agent and ``collect --import`` here fill it. A single collector behind mosquitto can
use a plain subscription (``--share-group ''``), which mosquitto does restore. Clustered
brokers (EMQX, HiveMQ, VerneMQ) keep shared subscriptions with the session.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import socket
import sqlite3
import ssl
import sys
import time
from collections import Counter
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.collector import (
    FLAGS,
    REJECTS,
    REPLAY_WINDOW,
    Collector,
    KeyRing,
    Store,
    key_dir_stamp,
    load_key_dir,
)
from edge_agent.summary.chain import MEANING
from edge_agent.tools import ToolError
from edge_agent.transport.export import BundleError

log = logging.getLogger("edge_agent.collect")

SUFFIXES = ("summary", "alert", "status", "cmd/result")
BATCH = 1000                # messages per transaction
RECEIVE_MAXIMUM = 1000      # MQTT 5: unacknowledged messages the broker may have out to us
KEY_POLL_S = 2.0
RECONNECT_MAX_S = 5       # short: see the module docstring on shared subscriptions
STATS_S = 60.0
MEANINGS = {
    **MEANING,
    "wrong_agent_key": "signed by a key enrolled for another agent",
    "topic_mismatch": "published under another agent's, site's or kind's topic",
    "replay": "a summary stored long ago re-sent over MQTT (not a QoS 1 redelivery)",
    "conflict": "a different signed summary for a stored (agent, seq); kept aside",
    "filled": "a summary brought late by a bundle, filling a gap",
}


def _keys(directory: str) -> KeyRing:
    try:
        ring = load_key_dir(directory)
    except OSError as exc:
        raise ToolError(f"--keys {directory}: {exc}") from None
    for err in ring.errors:
        log.warning("collect: key %s", err)
    return ring


def _open(db: str) -> Store:
    try:
        return Store(db)
    except (sqlite3.Error, OSError, RuntimeError) as exc:
        raise ToolError(f"--db {db}: {exc}") from None


def _tls(args: argparse.Namespace) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ToolError(f"--ca {args.ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.cert:
        try:
            ctx.load_cert_chain(args.cert, args.key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ToolError(f"--cert/--key: {exc}") from None
    elif args.key:
        raise ToolError("--key needs --cert")
    return ctx


class Live:
    """The MQTT side: paho's network thread queues, :meth:`run` stores and acknowledges."""

    def __init__(self, args: argparse.Namespace, store: Store, collector: Collector) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions
        self.mqtt = mqtt
        self.args = args
        self.store = store
        self.collector = collector
        url = urlsplit(args.broker)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ToolError(f"--broker {args.broker}: give mqtt://HOST[:PORT] or mqtts://...")
        tls = url.scheme == "mqtts" or bool(args.ca)
        self.host, self.port = url.hostname, url.port or (8883 if tls else 1883)
        self.where = f"{'mqtts' if tls else 'mqtt'}://{self.host}:{self.port}"
        self.v5 = args.protocol == "5"
        self.client_id = args.client_id or (
            f"edge-collector-{socket.gethostname().split('.')[0]}-"
            f"{sha256(str(Path(args.db).resolve()).encode()).hexdigest()[:8]}")
        filters = [f"{args.prefix}/+/+/{s}" for s in SUFFIXES]
        if self.v5 and args.share_group:
            filters = [f"$share/{args.share_group}/{f}" for f in filters]
        elif args.share_group:
            log.warning("collect: MQTT 3.1.1 has no shared subscriptions: subscribing plainly, "
                        "so every collector gets every message (use --protocol 5 to share)")
        if self.v5:
            opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            self.subscriptions: list[Any] = [(f, opts) for f in filters]
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
            self.connect_props: Any = Properties(PacketTypes.CONNECT)
            self.connect_props.SessionExpiryInterval = args.session_expiry
            self.connect_props.ReceiveMaximum = RECEIVE_MAXIMUM
        else:
            self.subscriptions = [(f, 1) for f in filters]
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
            self.connect_props = None
        self.filters = filters
        if tls:
            client.tls_set_context(_tls(args))
        if args.username or args.password_file:
            password = None
            if args.password_file:
                try:
                    password = Path(args.password_file).read_text().rstrip("\r\n")
                except OSError as exc:
                    raise ToolError(f"--password-file: {exc}") from None
            client.username_pw_set(args.username or None, password)
        client.reconnect_delay_set(0.1, RECONNECT_MAX_S)   # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client
        self.inbox: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.generation = 0        # bumped by each connection (network thread)
        self.stop = False
        self.reload = False
        self.failed = False
        self.totals: Counter[str] = Counter()
        self._last_error = ""

    # --- paho callbacks (network thread): queue, never block -------------------------------

    def _on_connect(self, client: Any, _ud: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._error(f"broker {self.where} refused the connection: {reason}")
            return
        self.generation += 1
        self._last_error = ""
        log.info("collect: connected to %s as %s (MQTT %s, session %s)", self.where,
                 self.client_id, "5" if self.v5 else "3.1.1",
                 "resumed" if flags.session_present else "new")
        # Subscribing again is harmless (a retained status comes only on a new subscription)
        # and right when --prefix or --share-group changed since the session began.
        client.subscribe(self.subscriptions)

    def _on_subscribe(self, _c: Any, _ud: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused = [(f, c) for (f, _), c in zip(self.subscriptions, codes) if c.is_failure]
        for topic, code in refused:
            log.error("collect: the broker refused the subscription %s: %s (its ACL must let "
                      "this identity read %s/#; 0x9E: no shared subscriptions)", topic, code,
                      self.args.prefix)
        if not refused:
            log.info("collect: subscribed to %s", ", ".join(self.filters))

    def _on_message(self, _c: Any, _ud: Any, msg: Any) -> None:
        self.inbox.put((self.generation, msg))

    def _on_connect_fail(self, _c: Any, _ud: Any) -> None:
        self._error(f"cannot connect to {self.where}: {sys.exc_info()[1]}")

    def _on_disconnect(self, _c: Any, _ud: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if not self.stop:
            self._error(f"connection to {self.where} lost ({reason}); reconnecting")

    def _error(self, message: str) -> None:
        if message != self._last_error:
            log.warning("collect: %s", message)
        self._last_error = message

    # --- the main thread -------------------------------------------------------------------

    def run(self, duration: float | None) -> int:
        if self.v5:
            self.client.connect_async(self.host, self.port, 30, clean_start=False,
                                      properties=self.connect_props)
        else:
            self.client.connect_async(self.host, self.port, 30)
        self.client.loop_start()
        end = time.monotonic() + duration if duration else float("inf")
        stamp = seen = key_dir_stamp(self.args.keys)
        next_poll = time.monotonic() + KEY_POLL_S
        next_stats = time.monotonic() + STATS_S
        try:
            while not self.stop and not self.failed:
                now = time.monotonic()
                if now >= end:
                    break
                self._step(min(0.2, end - now))
                if self.reload or now >= next_poll:
                    # A change is taken once it held still for a poll: a key file caught
                    # half-written would turn good messages into unknown_kid rejects.
                    fresh = key_dir_stamp(self.args.keys)
                    if self.reload or fresh != stamp and fresh == seen:
                        self._reload_keys()
                        stamp = fresh
                    seen = fresh
                    self.reload = False
                    next_poll = now + KEY_POLL_S
                if now >= next_stats:
                    self._log_totals("collect: so far")
                    next_stats = now + STATS_S
            # What arrived before the stop is stored and acknowledged; what comes after is
            # left to the broker's session.
            while not self.failed and self._step(0.05):
                pass
        finally:
            self.stop = True
            self.client.disconnect()
            self.client.loop_stop()
        self._log_totals("collect: stopped")
        return 1 if self.failed else 0

    def _step(self, timeout: float) -> int:
        """Store one batch and acknowledge it; the number of messages handled."""
        try:
            batch = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return 0
        while len(batch) < BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        while True:
            try:
                outcomes = self._store(batch)
                break
            except sqlite3.OperationalError as exc:
                # Locked past the timeout, disk full: nothing was acknowledged; try again.
                self._error(f"database {self.args.db}: {exc}; retrying")
                time.sleep(1.0)
                if self.stop:
                    return 0
            except Exception:
                log.exception("collect: storing a batch failed; its messages stay "
                              "unacknowledged at the broker")
                self.failed = True
                return 0
        generation = self.generation
        for gen, msg in batch:
            if msg.qos and gen == generation:
                self.client.ack(msg.mid, msg.qos)
        for out in outcomes:
            self.totals[out.action] += 1
            if out.reason:
                self.totals[out.reason] += 1
                log.warning("collect: rejected (%s) from %s: %s", out.reason,
                            out.agent_id or "?", out.detail)
        return len(batch)

    def _store(self, batch: list[tuple[int, Any]]) -> list[Any]:
        now = time.time()
        with self.store.transaction():
            return [self.collector.ingest(bytes(msg.payload), now, msg.topic,
                                          redelivered=bool(msg.dup)) for _, msg in batch]

    def _reload_keys(self) -> None:
        try:
            ring = load_key_dir(self.args.keys)
        except OSError as exc:
            log.warning("collect: cannot reload keys from %s: %s; keeping the old ones",
                        self.args.keys, exc)
            return
        for err in ring.errors:
            log.warning("collect: key %s", err)
        if not ring.keys:
            log.warning("collect: no key left in %s; keeping the %d enrolled before",
                        self.args.keys, len(self.collector.keys.keys))
            return
        self.collector.set_keys(ring)
        with self.store.transaction():
            self.store.save_keys(ring, time.time())
        log.info("collect: keys reloaded: %d key(s) for %d agent(s)", len(ring.keys),
                 len({a for a, _ in ring.enrolled()}))

    def _log_totals(self, what: str) -> None:
        t = self.totals
        extra = ", ".join(f"{k} {v}" for k, v in sorted(t.items())
                          if k not in ("stored", "duplicate", "rejected", "conflict"))
        log.info("%s: %d message(s): stored %d, duplicates %d, conflicts %d, rejected %d%s",
                 what, sum(t[k] for k in ("stored", "duplicate", "rejected", "conflict")),
                 t["stored"], t["duplicate"], t["conflict"], t["rejected"],
                 f" ({extra})" if extra else "")


# --- the report -----------------------------------------------------------------------------

def report(store: Store) -> list[dict[str, Any]]:
    """Per-agent figures: summaries, seq range, gaps (explained or not), duplicates, rejects
    and flags by name, documents, last status, enrolled kids."""
    db = store.db
    counters: dict[str, dict[str, int]] = {}
    for agent, name, n in db.execute("SELECT agent_id, name, n FROM counters"):
        counters.setdefault(agent, {})[name] = n
    agents = {row[0]: row for row in db.execute(
        "SELECT agent_id, site, first_seen, last_seen, min_seq, max_seq FROM agents")}
    kids: dict[str, list[str]] = {}
    for agent, kid in db.execute("SELECT agent_id, kid FROM keys ORDER BY kid"):
        kids.setdefault(agent, []).append(kid)
    out = []
    for agent in sorted(set(agents) | set(counters)):
        row = agents.get(agent)
        c = counters.get(agent, {})
        n, first, last = db.execute("SELECT count(*), min(seq), max(seq) FROM summaries "
                                    "WHERE agent_id = ?", (agent,)).fetchone()
        docs = dict(db.execute("SELECT kind, count(*) FROM documents WHERE agent_id = ? "
                               "GROUP BY kind", (agent,)).fetchall())
        status = db.execute("SELECT state, ts, received_at, source FROM status "
                            "WHERE agent_id = ?", (agent,)).fetchone()
        gaps = _gaps(store, agent, first)
        unexplained = sum(g["last"] - g["first"] + 1 for g in gaps if not g["explained"])
        flags = {k: v for k, v in sorted(c.items()) if k in FLAGS or k == "filled"}
        out.append({
            "agent_id": agent or None, "site": row[1] if row else None,
            "first_seen": row[2] if row else None, "last_seen": row[3] if row else None,
            "summaries": n, "first_seq": first, "last_seq": last,
            "gaps": {"unexplained": unexplained,
                     "explained": sum(g["last"] - g["first"] + 1 for g in gaps if g["explained"]),
                     "ranges": gaps},
            "intact": bool(n) and not unexplained and not any(
                c.get(k) for k in ("broken_chain", "conflict", "truncation")),
            "duplicates": c.get("duplicate", 0),
            "rejects": {k: v for k, v in sorted(c.items()) if k in REJECTS},
            "flags": flags,
            "conflicts": int(db.execute("SELECT count(*) FROM conflicts WHERE agent_id = ?",
                                        (agent,)).fetchone()[0]),
            "alerts": docs.get("alert", 0), "cmd_results": docs.get("cmd_result", 0),
            "statuses": docs.get("status", 0),
            "status": ({"state": status[0], "ts": status[1], "received_at": status[2],
                        "source": status[3]} if status else None),
            "kids": kids.get(agent, []),
        })
    return out


def _gaps(store: Store, agent: str, first: int | None) -> list[dict[str, Any]]:
    """Missing summaries now, each run explained or not by what the agent signed it dropped
    (``dropped_seqs``, a bundle manifest); summaries before the first one held are missing too."""
    if first is None:
        return []
    missing = [(1, first - 1)] if first > 1 else []
    missing += store.db.execute("SELECT lo, hi FROM gaps WHERE agent_id = ? ORDER BY lo",
                                (agent,)).fetchall()
    explained: list[tuple[int, int]] = []
    for lo, hi in store.db.execute("SELECT lo, hi FROM dropped WHERE agent_id = ? ORDER BY lo",
                                   (agent,)):
        if explained and lo <= explained[-1][1] + 1:
            explained[-1] = (explained[-1][0], max(explained[-1][1], hi))
        else:
            explained.append((lo, hi))
    out = []
    for lo, hi in missing:
        cur = lo
        for a, b in explained:
            if b < cur or a > hi:
                continue
            if a > cur:
                out.append({"first": cur, "last": a - 1, "explained": False})
            out.append({"first": max(a, cur), "last": min(b, hi), "explained": True})
            cur = min(b, hi) + 1
        if cur <= hi:
            out.append({"first": cur, "last": hi, "explained": False})
    return out


def render_report(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no agents yet\n"
    lines = []
    for r in rows:
        who = f"{r['agent_id'] or '(unidentified)'}" + (f" at {r['site']}" if r["site"] else "")
        head = "INTACT" if r["intact"] else "NOT INTACT" if r["summaries"] else "NO SUMMARIES"
        seqs = (f"{r['summaries']} summaries, seq {r['first_seq']}..{r['last_seq']}"
                if r["summaries"] else "no summaries")
        lines.append(f"{who}: {head}: {seqs}")
        g = r["gaps"]
        if g["ranges"]:
            shown = ", ".join(f"{x['first']}..{x['last']}" + ("" if not x["explained"]
                                                             else " (dropped by agent)")
                              for x in g["ranges"][:10])
            more = f" and {len(g['ranges']) - 10} more" if len(g["ranges"]) > 10 else ""
            lines.append(f"  gaps: {g['unexplained']} unexplained, {g['explained']} explained: "
                         f"{shown}{more}")
        lines.append(f"  duplicates dropped: {r['duplicates']}; alerts {r['alerts']}, command "
                     f"results {r['cmd_results']}, statuses {r['statuses']}")
        if r["rejects"]:
            lines.append("  rejected: " + ", ".join(f"{k} {v}" for k, v in r["rejects"].items()))
        if r["flags"]:
            lines.append("  flagged: " + ", ".join(f"{k} {v}" for k, v in r["flags"].items()))
        s = r["status"]
        if s:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["ts"])) if s["ts"] else "?"
            lines.append(f"  last status: {s['state']} (signed {when} UTC)")
        if r["kids"]:
            lines.append(f"  enrolled kid: {', '.join(r['kids'])}")
    names = sorted({k for r in rows for k in (*r["rejects"], *r["flags"])})
    if names:
        lines.append("meaning:")
        lines += [f"  {n}: {MEANINGS.get(n, '')}" for n in names]
    return "\n".join(lines) + "\n"


def cmd_collect(args: argparse.Namespace) -> int:
    if args.report:
        store = _open(args.db)
        try:
            rows = report(store)
        finally:
            store.close()
        if args.json:
            json.dump(rows, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(render_report(rows))
        return 0
    if args.broker and not args.keys:
        raise ToolError("--broker needs --keys DIR (the enrolled public keys of the agents)")
    store = _open(args.db)
    try:
        if args.keys:
            ring = _keys(args.keys)
            with store.transaction():
                store.save_keys(ring, time.time())
        else:
            ring = store.load_keys()
        if not ring.keys:
            raise ToolError(f"no enrolled key in {args.keys or args.db}: put the agents' public "
                            "keys (edge-agent keys show --json) in --keys DIR as <agent_id>.json")
        collector = Collector(store, ring, args.prefix, args.replay_window)
        if args.imports:
            return _import(args, collector)
        live = Live(args, store, collector)
        stop = lambda *_: setattr(live, "stop", True)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: setattr(live, "reload", True))
        return live.run(args.duration)
    finally:
        store.close()


def _import(args: argparse.Namespace, collector: Collector) -> int:
    results = []
    for path in args.imports:
        try:
            result = collector.import_bundle(path, time.time())
        except BundleError as exc:
            raise ToolError(str(exc)) from None
        results.append(result)
        if not args.json:
            a = result.actions
            names = ", ".join(f"{k} {v}" for k, v in sorted(result.names.items()))
            print(f"{path}: {'ok' if result.ok else 'PROBLEMS'}: {sum(a.values())} document(s) of "
                  f"{result.agent_id}@{result.site}: stored {a['stored']}, duplicates "
                  f"{a['duplicate']}, conflicts {a['conflict']}, rejected {a['rejected']}"
                  f"{'; ' + names if names else ''}")
            for p in result.problems:
                print(f"  {p.name}: {p.detail}")
    if args.json:
        json.dump([r.as_dict() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0 if all(r.ok for r in results) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="the centre's collector: verify and store the agents' "
                                       "documents (MQTT or bundles), report per agent")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--broker", metavar="URL", help="collect live: mqtt[s]://HOST[:PORT]")
    mode.add_argument("--import", dest="imports", nargs="+", metavar="BUNDLE",
                      help="ingest export bundles (edge-agent export) from air-gapped plants")
    mode.add_argument("--report", action="store_true", help="print per-agent figures")
    p.add_argument("--db", required=True, metavar="FILE", help="the collector's SQLite database")
    p.add_argument("--keys", metavar="DIR",
                   help="enrolled public keys: DIR/<agent_id>.{pem,pub,jwk,jwks,json} or "
                        "DIR/<agent_id>/*.<same> (reloaded on SIGHUP and on change); "
                        "--import without it uses the keys last enrolled in --db")
    m = p.add_argument_group("MQTT")
    m.add_argument("--ca", metavar="FILE", help="CA certificate(s) of the broker (PEM)")
    m.add_argument("--cert", metavar="FILE", help="client certificate (PEM)")
    m.add_argument("--key", metavar="FILE", help="client key (PEM)")
    m.add_argument("--username", metavar="USER")
    m.add_argument("--password-file", metavar="FILE")
    m.add_argument("--prefix", default="edge-agent", metavar="P",
                   help="topic prefix of the agents (mqtt.topic_prefix; default edge-agent)")
    m.add_argument("--share-group", default="edge-collectors", metavar="NAME",
                   help="MQTT 5 shared subscription group (default edge-collectors; '' for a "
                        "plain subscription)")
    m.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    m.add_argument("--client-id", metavar="ID",
                   help="stable client id of the persistent session (default: from the host "
                        "and --db; give each collector of a group its own)")
    m.add_argument("--session-expiry", type=int, default=7 * 86400, metavar="S",
                   help="MQTT 5: seconds the broker keeps the session (and queues messages) "
                        "while the collector is away (default 7 days)")
    m.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--replay-window", type=int, default=REPLAY_WINDOW, metavar="N",
                   help="a stored summary re-sent over MQTT more than N behind the newest is a "
                        f"replay, not a redelivery (default {REPLAY_WINDOW}; keep it above the "
                        "agents' mqtt.max_inflight)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_collect)

