"""The collector against real parts: mosquitto (tests/transport/broker.py: TLS, client
certificates, ACLs, persistence), the real agent (``edge-agent run``, or the agent service
driven by a child process that keeps producing), and ``edge-agent collect`` as a subprocess.

Every test ends at the collector's database: each summary stored exactly once, in arrival
order, its ``prev`` the hash of the one before, and every rejected or flagged message counted
under its name.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.summary.sign import DeviceKey, dumps, token_hash
from tests.conftest import PCAPS
from tests.transport.broker import COLLECTOR, HOST, PREFIX, Broker, missing_requirements

pytestmark = pytest.mark.skipif(missing_requirements() is not None,
                                reason=str(missing_requirements()))

ROOT = Path(__file__).resolve().parents[1]
AGENT, SITE = "gw-1", "site-a"
OTHER, OTHER_SITE = "gw-2", "site-b"
INFLIGHT = 8
MODBUS = PCAPS / "modbus" / "modbus_modbus.pcap"            # 41 one-second windows
IEC104 = PCAPS / "iec104" / "iec104.pcap"                   # 38
ENIP = PCAPS / "enip" / "EIP-RebootorRestart.pcap"          # 34, with plc_stop alerts
needs_fixtures = pytest.mark.skipif(not MODBUS.exists(), reason="shared fixtures absent")


def wait(predicate: Callable[[], Any], timeout: float, what: str,
         explain: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                                 + (f"\n{explain()}" if explain else ""))
        time.sleep(0.02)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", agents={AGENT: SITE, OTHER: OTHER_SITE})
    b.start()
    yield b
    b.close()


def enrol(tmp: Path, agent: str, pem: bool = False) -> tuple[Path, DeviceKey]:
    """The agent's state dir with its device key, and its public key in the centre's key dir
    (as `edge-agent keys show --json` prints it, or PEM)."""
    state = tmp / f"state-{agent}"
    key = DeviceKey.create(state / "device.key")
    keys = tmp / "keys"
    keys.mkdir(exist_ok=True)
    if pem:
        (keys / f"{agent}.pem").write_text(key.public_pem())
    else:
        (keys / f"{agent}.json").write_text(json.dumps({"keys": [key.public_jwk()],
                                                        "kid": key.kid}))
    return state, key


def agent_config(broker: Broker, tmp: Path, state: Path, agent: str = AGENT,
                 site: str = SITE) -> Path:
    cert, key = broker.client_cert(agent)
    path = tmp / f"{agent}.toml"
    path.write_text(f"""
[agent]
id = "{agent}"
site = "{site}"
state_dir = "{state}"
[summary]
window_s = 1.0
[mqtt]
url = "{broker.url()}"
ca_file = "{broker.ca_file}"
cert_file = "{cert}"
key_file = "{key}"
reconnect_min_s = 0.1
reconnect_max_s = 1.0
max_inflight = {INFLIGHT}
""")
    return path


def run_agent(cfg: Path, *pcaps: Path) -> None:
    """The real agent on capture files: it publishes what it can, then exits."""
    run = subprocess.run([sys.executable, "-m", "edge_agent", "run", "-q", "--config", str(cfg),
                          "--pcap", *map(str, pcaps)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stderr


# The agent service (the one `edge-agent run` uses: pipeline, signed summaries, spool, MQTT
# transport) fed real frames at one window of packet time each, paced in wall time, so it
# keeps producing while the test stops the broker or kills it.
PRODUCER = r"""
import sys, time
from edge_agent.capture.source import CaptureStats, FileSource
from edge_agent.config import load
from edge_agent.service import Agent
cfg = load(sys.argv[1])
frames = [(lt, fr) for _, lt, fr in FileSource([sys.argv[2]], "")]
count, pace = int(sys.argv[3]), float(sys.argv[4])
agent = Agent(cfg, CaptureStats)
t0 = 1.7e9 + 10.0 * agent.spool.next_seq()
def packets():
    for i in range(count):
        lt, fr = frames[i % len(frames)]
        yield t0 + i, lt, fr
        time.sleep(pace)
agent.run(packets())
"""


def producer(cfg: Path, count: int, pace: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(cfg), str(MODBUS), str(count),
                             str(pace)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def spool_seq(state: Path) -> int:
    try:
        with _ro(state / "spool.sqlite") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def spool_summaries(state: Path) -> dict[int, str]:
    with _ro(state / "spool.sqlite") as db:
        return dict(db.execute("SELECT seq, doc FROM documents WHERE kind = 'summary'"))


class _ro:
    """A read-only connection, closed on exit (the collector keeps writing)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


class Collector:
    """``edge-agent collect --broker`` as a subprocess, with the collector's certificate."""

    def __init__(self, broker: Broker, db: Path, keys: Path, client_id: str, *extra: str,
                 protocol: str = "5") -> None:
        cert, key = broker.client_cert(COLLECTOR)
        self.db = db
        self.cmd = [sys.executable, "-m", "edge_agent", "collect", "--broker", broker.url(),
                    "--ca", str(broker.ca_file), "--cert", str(cert), "--key", str(key),
                    "--keys", str(keys), "--db", str(db), "--client-id", client_id,
                    "--protocol", protocol, *extra]
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        seen = len(self.lines)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        wait(lambda: any("subscribed to" in x for x in self.lines[seen:])
             or self.proc.poll() is not None, 15, "the collector to subscribe")
        assert self.proc.poll() is None, self.log()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, timeout: float = 10) -> None:
        wait(lambda: text in self.log(), timeout, f"{text!r} in the collector's log")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(15) == 0, self.log()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    started: list[Collector] = []
    yield started
    for c in started:
        c.kill()


def stored(db: Path, agent: str = AGENT) -> list[tuple[int, str, str | None, str]]:
    """``(seq, hash, prev, source)`` of the agent's summaries in arrival order."""
    if not db.exists():
        return []
    with _ro(db) as conn:
        return conn.execute("SELECT seq, hash, prev, source FROM summaries WHERE agent_id = ? "
                            "ORDER BY id", (agent,)).fetchall()


def counters(db: Path, agent: str = AGENT) -> dict[str, int]:
    with _ro(db) as conn:
        return dict(conn.execute("SELECT name, n FROM counters WHERE agent_id = ?", (agent,)))


def assert_exactly_once_in_order(db: Path, last: int, agent: str = AGENT,
                                 arrival: bool = True) -> None:
    """Summaries 1..last each once, chained; in arrival order too unless ``arrival`` is off."""
    rows = stored(db, agent)
    if not arrival:
        rows.sort()
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, last + 1)), (len(seqs), _diff(seqs, last))
    assert rows[0][2] is None
    assert all(cur[2] == before[1] for before, cur in itertools.pairwise(rows)), "chain broken"


def _diff(seqs: list[int], last: int) -> str:
    missing = sorted(set(range(1, last + 1)) - set(seqs))
    out = [a for a, b in itertools.pairwise(seqs) if b <= a]
    return f"missing {missing[:10]}, out of order after {out[:10]}"


def explain(db: Path, *cols: Collector) -> Callable[[], str]:
    def text() -> str:
        seqs = [r[0] for r in stored(db)]
        logs = "\n".join(f"--- {c.cmd[c.cmd.index('--client-id') + 1]}:\n{c.log()[-3000:]}"
                          for c in cols)
        return (f"{len(seqs)} stored, {_diff(seqs, max(seqs, default=0))}, counters "
                f"{counters(db) if db.exists() else {}}\n{logs}")
    return text


def report(db: Path, cli: bool = False) -> dict[str, dict[str, Any]]:
    """Per-agent figures, from `edge-agent collect --report --json` or the same in-process."""
    if cli:
        run = subprocess.run([sys.executable, "-m", "edge_agent", "collect", "--report", "--json",
                              "--db", str(db)], capture_output=True, text=True, cwd=ROOT,
                             timeout=30, check=False)
        assert run.returncode == 0, run.stderr
        rows = json.loads(run.stdout)
    else:
        from edge_agent.collector import Store
        from edge_agent.tools.collect import report as figures
        store = Store(db)
        try:
            rows = figures(store)
        finally:
            store.close()
    return {r["agent_id"]: r for r in rows}


def collect_import(db: Path, *bundles: Path, keys: Path | None = None) -> tuple[int, Any]:
    cmd = [sys.executable, "-m", "edge_agent", "collect", "--json", "--db", str(db),
           "--import", *map(str, bundles)]
    if keys is not None:
        cmd += ["--keys", str(keys)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert run.returncode in (0, 1), run.stderr
    return run.returncode, json.loads(run.stdout)


def publisher(broker: Broker, cn: str) -> mqtt.Client:
    """A client holding ``cn``'s certificate (so the ACL lets it write only cn's topics)."""
    cert, key = broker.client_cert(cn)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"intruder-{cn}",
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(broker.ca_file), certfile=str(cert), keyfile=str(key))
    client.connect(HOST, broker.tls_port, 30)
    client.loop_start()
    wait(client.is_connected, 10, f"{cn} to connect")
    return client


def publish(client: mqtt.Client, topic: str, payload: str) -> None:
    info = client.publish(topic, payload.encode(), qos=1)
    info.wait_for_publish(5)
    assert info.is_published()


def summary_token(key: DeviceKey, seq: int, prev: str | None, agent: str = AGENT,
                  site: str = SITE, **extra: Any) -> str:
    return key.sign(dumps({"type": "summary", "agent_id": agent, "site": site, "seq": seq,
                           "prev": prev, "window": {"start": 1.8e9 + seq, "end": 1.8e9 + seq + 1,
                                                    "complete": True},
                           "dropped_seqs": [], **extra}))


# --- (a) ------------------------------------------------------------------------------------

@needs_fixtures
def test_round_trip_capture_agent_broker_collector(broker: Broker, tmp_path: Path,
                                                   collectors: list[Collector]) -> None:
    state, key = enrol(tmp_path, AGENT, pem=True)
    db = tmp_path / "centre.sqlite"
    col = Collector(broker, db, tmp_path / "keys", "centre-1")
    collectors.append(col)
    cfg = agent_config(broker, tmp_path, state)
    run_agent(cfg, ENIP)
    total = spool_seq(state)
    assert total >= 30
    wait(lambda: len(stored(db)) >= total, 20, f"{total} summaries in the collector")

    # The collector stops; the agent goes on; the broker keeps the session's messages; the
    # restarted collector resumes the chain from its database.
    col.stop()
    run_agent(cfg, IEC104)
    total2 = spool_seq(state)
    col.start()
    wait(lambda: len(stored(db)) >= total2, 20, f"{total2} summaries after the restart")
    col.stop()
    assert_exactly_once_in_order(db, total2)
    assert [r[1] for r in stored(db)] == [token_hash(t) for _, t in
                                          sorted(spool_summaries(state).items())]
    r = report(db, cli=True)[AGENT]
    assert r["intact"] and r["summaries"] == total2 and r["gaps"]["ranges"] == []
    assert (r["first_seq"], r["last_seq"], r["rejects"], r["flags"]) == (1, total2, {}, {})
    assert r["alerts"] >= 2 and r["status"]["state"] == "offline"   # the agent said goodbye
    assert r["kids"] == [key.kid]
    with _ro(db) as conn:
        rules = {json.loads(base64.urlsafe_b64decode(t.split(".")[1] + "=="))["finding"]["rule"]
                 for (t,) in conn.execute("SELECT token FROM documents WHERE kind = 'alert'")}
    assert {"plc_stop", "device_restart"} <= rules
    assert "session resumed" in col.log()


# --- (b) ------------------------------------------------------------------------------------

@needs_fixtures
def test_broker_down_while_the_agent_produces(broker: Broker, tmp_path: Path,
                                              collectors: list[Collector]) -> None:
    state, _ = enrol(tmp_path, AGENT)
    db = tmp_path / "centre.sqlite"
    # A plain subscription: mosquitto restores it with the session after a restart, where it
    # drops shared ones (see the next test).
    collectors.append(Collector(broker, db, tmp_path / "keys", "centre-1", "--share-group", ""))
    total = 200
    agent = producer(agent_config(broker, tmp_path, state), total, 0.01)
    try:
        wait(lambda: len(stored(db)) >= 40, 20, "40 summaries")
        broker.stop()
        down_at = spool_seq(state)
        wait(lambda: spool_seq(state) >= down_at + 50, 20, "50 summaries while the broker is down")
        broker.start()
        assert agent.wait(30) == 0, agent.stderr.read() if agent.stderr else ""
    finally:
        if agent.poll() is None:
            agent.kill()
    assert spool_seq(state) == total
    wait(lambda: len(stored(db)) >= total, 20, f"all {total} summaries",
         explain(db, *collectors))
    collectors[0].stop()
    assert_exactly_once_in_order(db, total)
    c = counters(db)
    assert not {k for k in c if k != "duplicate"}, c
    assert report(db)[AGENT]["intact"]


@needs_fixtures
def test_summaries_lost_at_the_broker_are_a_gap_that_a_bundle_fills(
        broker: Broker, tmp_path: Path, collectors: list[Collector]) -> None:
    """A shared subscription over a broker restart: mosquitto 2.0 forgets it, so what the
    agent publishes before the collector subscribes again is dropped (PUBACK 0x10). The
    collector reports the gap; the agent's bundle fills it. A broker that keeps shared
    subscriptions delivers everything, and the bundle is all duplicates."""
    state, _ = enrol(tmp_path, AGENT)
    db = tmp_path / "centre.sqlite"
    col = Collector(broker, db, tmp_path / "keys", "centre-1")
    collectors.append(col)
    cfg = agent_config(broker, tmp_path, state)
    run_agent(cfg, MODBUS)
    first = spool_seq(state)
    wait(lambda: len(stored(db)) >= first, 20, f"{first} summaries")
    col.stop()
    broker.restart()
    run_agent(cfg, IEC104)                 # published while the collector is away
    second = spool_seq(state)
    col.start()
    run_agent(cfg, ENIP)
    total = spool_seq(state)
    wait(lambda: max((r[0] for r in stored(db)), default=0) >= total, 20, "the last summary",
         explain(db, col))
    time.sleep(0.3)
    seqs = {r[0] for r in stored(db)}
    gaps = report(db)[AGENT]["gaps"]["ranges"]
    lost = sorted(set(range(1, total + 1)) - seqs)
    if lost:
        assert lost == list(range(first + 1, second + 1))
        assert gaps == [{"first": first + 1, "last": second, "explained": False}]
    else:
        assert gaps == []
    bundle = tmp_path / "plant.bundle"
    subprocess.run([sys.executable, "-m", "edge_agent", "export", "--config", str(cfg),
                    "--out", str(bundle)], capture_output=True, cwd=ROOT, check=True)
    rc, (result,) = collect_import(db, bundle)
    assert rc == 0 and result["ok"], result
    assert result["actions"].get("stored", 0) == len(lost)
    assert result["problems"] == ({"filled": len(lost)} if lost else {})
    col.stop()
    assert_exactly_once_in_order(db, total, arrival=not lost)
    r = report(db)[AGENT]
    assert r["intact"] and r["gaps"]["ranges"] == [] and set(r["rejects"]) == set()


# --- (c) ------------------------------------------------------------------------------------

@needs_fixtures
def test_agent_sigkilled_mid_stream_and_restarted(broker: Broker, tmp_path: Path,
                                                  collectors: list[Collector]) -> None:
    state, _ = enrol(tmp_path, AGENT)
    db = tmp_path / "centre.sqlite"
    collectors.append(Collector(broker, db, tmp_path / "keys", "centre-1"))
    cfg = agent_config(broker, tmp_path, state)
    first = producer(cfg, 100_000, 0.004)
    try:
        wait(lambda: len(stored(db)) >= 80 or first.poll() is not None, 20, "80 summaries")
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    finally:
        if first.poll() is None:
            first.kill()
    second = producer(cfg, 20, 0.0)
    assert second.wait(30) == 0, second.stderr.read() if second.stderr else ""
    total = spool_seq(state)
    wait(lambda: len(stored(db)) >= total, 20, f"all {total} summaries",
         explain(db, *collectors))
    collectors[0].stop()
    assert_exactly_once_in_order(db, total)
    c = counters(db)
    # The killed agent re-sends what it had in flight: dropped as duplicates, never replays.
    assert c.get("duplicate", 0) <= INFLIGHT + 1 and set(c) <= {"duplicate"}, c
    r = report(db)[AGENT]
    assert r["intact"] and r["status"]["state"] == "offline"


# --- (d) ------------------------------------------------------------------------------------

@needs_fixtures
def test_tampered_replayed_reordered_unenrolled_and_misplaced_messages(
        broker: Broker, tmp_path: Path, collectors: list[Collector]) -> None:
    state, key = enrol(tmp_path, AGENT)
    db = tmp_path / "centre.sqlite"
    col = Collector(broker, db, tmp_path / "keys", "centre-1")
    collectors.append(col)
    # gw-2 is enrolled while the collector runs: SIGHUP reloads the key directory.
    _, other_key = enrol(tmp_path, OTHER, pem=True)
    col.signal(signal.SIGHUP)
    col.wait_log("keys reloaded: 2 key(s) for 2 agent(s)")

    agent = producer(agent_config(broker, tmp_path, state), 120, 0.0)
    assert agent.wait(30) == 0
    wait(lambda: len(stored(db)) >= 120, 20, "120 summaries")
    docs = spool_summaries(state)
    topic = f"{PREFIX}/{SITE}/{AGENT}/summary"

    header, payload, sig = docs[5].split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["health"] = {"packets": 0}
    tampered = f"{header}.{base64.urlsafe_b64encode(dumps(body)).rstrip(b'=').decode()}.{sig}"
    s121 = summary_token(key, 121, token_hash(docs[120]))
    s122 = summary_token(key, 122, token_hash(s121))
    s122_other = summary_token(key, 122, token_hash(s121), note="a second document, seq 122")
    stranger = DeviceKey(Ed25519PrivateKey.generate())
    unenrolled = summary_token(stranger, 123, token_hash(s122))
    foreign = summary_token(other_key, 1, None, agent=OTHER, site=OTHER_SITE)

    intruder = publisher(broker, AGENT)      # gw-1's credentials, e.g. a compromised gateway
    try:
        for token in (tampered, docs[2], s122, s121, s122, s122_other, unenrolled, foreign):
            publish(intruder, topic, token)
    finally:
        intruder.disconnect()
        intruder.loop_stop()
    want = {"bad_signature": 1, "replay": 1, "reorder": 1, "duplicate": 1, "conflict": 1,
            "unknown_kid": 1, "topic_mismatch": 1}
    wait(lambda: counters(db) == want, 15, f"the counters {want}")
    col.stop()
    assert [r[0] for r in stored(db)][-2:] == [122, 121]
    assert_exactly_once_in_order(db, 122, arrival=False)
    assert stored(db, OTHER) == []
    with _ro(db) as conn:
        assert conn.execute("SELECT seq, token FROM conflicts").fetchall() == [(122, s122_other)]
        events = dict(conn.execute("SELECT name, token FROM events WHERE agent_id = ?", (AGENT,)))
    assert events["bad_signature"] == tampered and events["topic_mismatch"] == foreign
    r = report(db, cli=True)
    assert r[AGENT]["rejects"] == {"bad_signature": 1, "replay": 1, "topic_mismatch": 1,
                                   "unknown_kid": 1}
    assert r[AGENT]["flags"] == {"conflict": 1, "reorder": 1} and r[AGENT]["conflicts"] == 1
    assert r[AGENT]["gaps"]["ranges"] == [] and r[AGENT]["duplicates"] == 1
    assert not r[AGENT]["intact"]                      # a conflict is not an intact record
    assert OTHER not in r                              # nothing of gw-2 was stored or counted
    text = subprocess.run([sys.executable, "-m", "edge_agent", "collect", "--report", "--db",
                           str(db)], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout
    assert "rejected: bad_signature 1, replay 1, topic_mismatch 1, unknown_kid 1" in text


# --- (e) ------------------------------------------------------------------------------------

@needs_fixtures
def test_shared_subscription_splits_the_load(broker: Broker, tmp_path: Path,
                                             collectors: list[Collector]) -> None:
    state, _ = enrol(tmp_path, AGENT)
    keys = tmp_path / "keys"
    # Group "split": two collectors, a database each. Group "pair": two collectors, one
    # database (each moves the chain on for the other).
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    shared = tmp_path / "shared.sqlite"
    for db, cid, group in ((a, "split-a", "split"), (b, "split-b", "split"),
                           (shared, "pair-a", "pair"), (shared, "pair-b", "pair")):
        collectors.append(Collector(broker, db, keys, cid, "--share-group", group))
    total = 200
    agent = producer(agent_config(broker, tmp_path, state), total, 0.002)
    assert agent.wait(60) == 0
    wait(lambda: len(stored(a)) + len(stored(b)) >= total and len(stored(shared)) >= total, 20,
         "every summary in each group")
    for c in collectors:
        c.stop()
    seqs_a = {r[0] for r in stored(a)}
    seqs_b = {r[0] for r in stored(b)}
    assert seqs_a and seqs_b and not seqs_a & seqs_b
    assert seqs_a | seqs_b == set(range(1, total + 1))
    assert len(stored(a)) + len(stored(b)) == total
    rows = stored(shared)
    assert sorted(r[0] for r in rows) == list(range(1, total + 1))
    by_seq = {r[0]: r for r in rows}
    assert all(by_seq[s][2] == by_seq[s - 1][1] for s in range(2, total + 1))
    assert {r[3] for r in rows} == {"mqtt"}
    r = report(shared)[AGENT]
    assert r["intact"] and r["gaps"]["ranges"] == []
    assert set(r["rejects"]) == set() and set(r["flags"]) <= {"reorder"}


# --- (f) ------------------------------------------------------------------------------------

@needs_fixtures
def test_bundle_import_merges_with_mqtt_and_truncation_is_flagged(
        broker: Broker, tmp_path: Path, collectors: list[Collector]) -> None:
    state, _ = enrol(tmp_path, AGENT)
    db = tmp_path / "centre.sqlite"
    # MQTT 3.1.1 on purpose: a plain subscription, said so in the log. A small replay window
    # shows that summaries a bundle brought first are duplicates over MQTT, not replays.
    col = Collector(broker, db, tmp_path / "keys", "centre-1", "--replay-window", "5",
                    protocol="3.1.1")
    collectors.append(col)
    assert "MQTT 3.1.1 has no shared subscriptions" in col.log()
    cfg = agent_config(broker, tmp_path, state)
    run_agent(cfg, MODBUS)                          # published
    first = spool_seq(state)
    wait(lambda: len(stored(db)) >= first, 20, f"{first} summaries")
    broker.stop()
    run_agent(cfg, IEC104)                          # the plant is cut off: stays in the spool
    second = spool_seq(state)
    bundle = tmp_path / "plant.bundle"
    export = subprocess.run([sys.executable, "-m", "edge_agent", "export", "--config", str(cfg),
                             "--out", str(bundle)], capture_output=True, text=True, cwd=ROOT,
                            check=False)
    assert export.returncode == 0, export.stderr

    # Imported while the live collector runs on the same database, with the enrolled keys
    # it saved there.
    rc, (result,) = collect_import(db, bundle)
    assert rc == 0 and result["ok"], result
    assert result["actions"]["stored"] >= second - first
    assert result["actions"]["duplicate"] >= first
    assert result["problems"] == {}
    broker.start()
    run_agent(cfg, ENIP)                            # the backlog goes out over MQTT as well
    third = spool_seq(state)
    wait(lambda: len(stored(db)) >= third, 20, f"{third} summaries")
    wait(lambda: counters(db).get("duplicate", 0) >= (first + second - first), 20,
         "the backlog over MQTT")
    col.stop()
    assert_exactly_once_in_order(db, third)
    sources = [r[3] for r in stored(db)]
    assert set(sources[first:second]) == {f"bundle:{bundle.name}"}
    assert set(sources[:first] + sources[second:]) == {"mqtt"}
    c = counters(db)
    assert set(c) == {"duplicate"}, c                # no replay, reorder or conflict
    assert report(db)[AGENT]["intact"]

    # The same bundle again: duplicates only. Cut short, by whole lines or mid-line: flagged.
    lines = bundle.read_bytes().splitlines(keepends=True)
    (tmp_path / "short.bundle").write_bytes(b"".join(lines[:-3]))
    (tmp_path / "torn.bundle").write_bytes(b"".join(lines)[:-40])
    rc, results = collect_import(db, bundle, tmp_path / "short.bundle", tmp_path / "torn.bundle",
                                 keys=tmp_path / "keys")
    again, short, torn = results
    assert rc == 1
    assert again["ok"] and set(again["actions"]) == {"duplicate"}
    assert not short["ok"] and short["problems"] == {"truncation": 1}
    assert [p["name"] for p in short["bundle_problems"]] == ["truncation"]
    # The torn token is malformed or too short a signature, depending on where the cut fell.
    assert not torn["ok"] and torn["actions"]["rejected"] == 1
    assert set(torn["problems"]) in ({"truncation", "malformed"},
                                     {"truncation", "bad_signature"})
    assert_exactly_once_in_order(db, third)
    assert report(db)[AGENT]["flags"] == {"truncation": 2}


# --- acknowledged only once stored ----------------------------------------------------------

@needs_fixtures
def test_collector_killed_before_its_commit_loses_nothing(broker: Broker, tmp_path: Path,
                                                          collectors: list[Collector]) -> None:
    """The database is locked (as by a long report or a full disk) while the broker delivers;
    the collector is SIGKILLed with the messages received but not stored. Had it acknowledged
    them on receipt, the broker would have forgotten them."""
    state, _ = enrol(tmp_path, AGENT)
    db = tmp_path / "centre.sqlite"
    col = Collector(broker, db, tmp_path / "keys", "centre-1")
    collectors.append(col)
    cfg = agent_config(broker, tmp_path, state)
    run_agent(cfg, ENIP)
    first = spool_seq(state)
    wait(lambda: len(stored(db)) >= first, 20, f"{first} summaries")
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        run_agent(cfg, MODBUS)           # returns once the broker has acknowledged everything
        with _ro(state / "spool.sqlite") as spool:
            assert spool.execute("SELECT count(*) FROM documents WHERE published = 0"
                                 ).fetchone()[0] == 0
        sub = broker.subscriber()        # the broker has routed everything once this returns
        sub.barrier()
        sub.close()
        time.sleep(0.3)                  # and the collector's network thread has queued it
        col.kill()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    total = spool_seq(state)
    assert len(stored(db)) == first
    col.start()                          # same client id: the session, with what was unacked
    wait(lambda: len(stored(db)) >= total, 20, f"all {total} summaries after the restart")
    col.stop()
    assert_exactly_once_in_order(db, total)
    assert set(counters(db)) <= {"duplicate"}


# --- the core, without a broker -------------------------------------------------------------

def test_chain_state_keys_and_gap_explanations_survive_a_restart(tmp_path: Path) -> None:
    from edge_agent.collector import Collector as Core
    from edge_agent.collector import Store, load_key_dir
    from edge_agent.tools.collect import report as figures

    old, new = (DeviceKey(Ed25519PrivateKey.generate()) for _ in range(2))
    keys = tmp_path / "keys"
    (keys / AGENT).mkdir(parents=True)         # a key rotation: two keys for one agent
    (keys / AGENT / "old.pem").write_text(old.public_pem())
    (keys / AGENT / "new.jwk").write_text(json.dumps(new.public_jwk()))
    (keys / "README.txt").write_text("not a key")
    ring = load_key_dir(keys)
    assert ring.enrolled() == sorted([(AGENT, old.kid), (AGENT, new.kid)]) and not ring.errors
    topic = f"{PREFIX}/{SITE}/{AGENT}/summary"
    tokens: list[str] = []
    for seq in range(1, 12):
        key = old if seq < 6 else new
        tokens.append(summary_token(key, seq, token_hash(tokens[-1]) if tokens else None,
                                    dropped_seqs=[9] if seq == 10 else []))

    def feed(*seqs: int) -> list[tuple[str, tuple[str, ...]]]:
        store = Store(tmp_path / "c.sqlite")          # a new process each time
        try:
            core = Core(store, ring)
            with store.transaction():
                store.save_keys(ring, 0.0)
                outs = [core.ingest(tokens[s - 1].encode(), 1.0, topic) for s in seqs]
        finally:
            store.close()
        return [(o.action, o.flags) for o in outs]

    assert feed(1, 2, 3, 5) == [("stored", ())] * 3 + [("stored", ("gap",))]
    assert feed(4, 7) == [("stored", ("reorder",)), ("stored", ("gap",))]
    assert feed(8, 10, 7) == [("stored", ()), ("stored", ("gap",)), ("duplicate", ())]
    store = Store(tmp_path / "c.sqlite")
    try:
        (r,) = figures(store)
    finally:
        store.close()
    assert r["gaps"] == {"unexplained": 1, "explained": 1, "ranges": [
        {"first": 6, "last": 6, "explained": False}, {"first": 9, "last": 9, "explained": True}]}
    assert (r["summaries"], r["flags"], r["kids"]) == (8, {"reorder": 1}, sorted([old.kid, new.kid]))
    assert not r["intact"]


def test_alerts_command_results_and_the_latest_status(tmp_path: Path) -> None:
    from edge_agent.collector import Collector as Core
    from edge_agent.collector import KeyRing, Store

    key = DeviceKey(Ed25519PrivateKey.generate())
    ring = KeyRing({key.kid: key.public}, {key.kid: frozenset({AGENT})})
    base = f"{PREFIX}/{SITE}/{AGENT}"

    def doc(kind: str, ts: float, **extra: Any) -> str:
        return key.sign(dumps({"type": kind, "agent_id": AGENT, "site": SITE, "ts": ts, **extra}))

    alert = doc("alert", 5.0, finding={"rule": "plc_stop", "severity": "critical"})
    result = doc("cmd_result", 6.0, jti="j-1", cmd="status", ok=True)
    online, will = doc("status", 10.0, state="online"), doc("status", 2.0, state="offline")
    old_online = doc("status", 1.0, state="online")
    store = Store(tmp_path / "c.sqlite")
    core = Core(store, ring)
    with store.transaction():
        outs = [core.ingest(t.encode(), 0.0, f"{base}/{suffix}") for t, suffix in (
            (alert, "alert"), (alert, "alert"), (result, "cmd/result"), (online, "status"),
            (will, "status"),                      # the last will, signed at start: older ts
            (result, "alert"))]                    # a command result on the alert topic
        outs.append(core.ingest(old_online, 0.0, source="bundle:x", expect=(AGENT, SITE)))
    assert [(o.action, o.kind, o.reason) for o in outs] == [
        ("stored", "alert", None), ("duplicate", "alert", None), ("stored", "cmd_result", None),
        ("stored", "status", None), ("stored", "status", None),
        ("rejected", None, "topic_mismatch"), ("stored", "status", None)]
    state = store.db.execute("SELECT state, ts FROM status WHERE agent_id = ?",
                             (AGENT,)).fetchone()
    assert state == ("offline", 2.0)          # live: the newest to arrive; a bundle's only if newer
    kinds = dict(store.db.execute("SELECT kind, count(*) FROM documents GROUP BY kind"))
    assert kinds == {"alert": 1, "cmd_result": 1, "status": 3}
    store.close()
