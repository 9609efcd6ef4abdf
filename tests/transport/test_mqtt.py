"""The MQTT transport against a real mosquitto (tests/transport/broker.py): TLS with client
certificates, ACLs, broker restarts and agent crashes, MQTT 5 and 3.1.1.

Documents are checked at a subscriber holding the collector's identity, by payload: every
document arrives, in order, once; after a SIGKILL of the agent only the last in-flight window
may arrive twice (QoS 1 cannot do better; the collector drops those by JWS hash).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import Config, validate
from edge_agent.transport.mqtt import MqttTransport
from edge_agent.transport.spool import Spool
from tests.transport.broker import CA, PREFIX, Broker, free_port, missing_requirements

pytestmark = pytest.mark.skipif(missing_requirements() is not None,
                                reason=str(missing_requirements()))

AGENT, SITE, PASSWORD = "gw-1", "site-a", "s3cret-pw"
BASE = f"{PREFIX}/{SITE}/{AGENT}"
ROOT = Path(__file__).resolve().parents[2]
INFLIGHT = 8


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", agents={AGENT: SITE}, passwords={AGENT: PASSWORD})
    b.start()
    yield b
    b.close()


def raw_config(broker: Broker, *, protocol: str = "5", tls: bool = True, cert: bool = True,
               site: str = SITE, **mqtt: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"url": broker.url(tls), "protocol": protocol, "keepalive_s": 5,
                         "reconnect_min_s": 0.1, "reconnect_max_s": 1.0,
                         "max_inflight": INFLIGHT}
    if tls:
        m["ca_file"] = str(broker.ca_file)
        if cert:
            crt, key = broker.client_cert(AGENT)
            m["cert_file"], m["key_file"] = str(crt), str(key)
    else:
        m["username"] = AGENT
        m["password_file"] = str(broker.password_file(AGENT))
    m.update(mqtt)
    return {"agent": {"id": AGENT, "site": site}, "mqtt": m}


def config(broker: Broker, **kw: Any) -> Config:
    return validate(raw_config(broker, **kw))


class FakeStatus:
    """Stands in for the signed status document: JSON with the state and a call number
    (the last will is call 1, made at start)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, state: str) -> str:
        self.calls += 1
        return json.dumps({"state": state, "n": self.calls, "pid": os.getpid()})


def retained_json(broker: Broker, topic: str) -> dict[str, Any]:
    payload = broker.retained(topic)
    assert payload is not None, f"nothing retained on {topic}"
    return json.loads(payload)


def doc(seq: int) -> str:
    return json.dumps({"seq": seq, "pad": "x" * 300})


def seqs(payloads: list[bytes]) -> list[int]:
    return [json.loads(p)["seq"] for p in payloads]


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def transport(cfg: Config, spool_path: Path, status: Callable[[str], str] | None = None,
              site: str = SITE) -> MqttTransport:
    return MqttTransport(cfg, spool_path, AGENT, site, status or FakeStatus())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_round_trip_in_order_on_the_right_topics(broker: Broker, tmp_path: Path,
                                                 protocol: str) -> None:
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    for seq in (1, 2, 3):
        spool.append("summary", float(seq), doc(seq), seq=seq)
    spool.append("alert", 3.5, json.dumps({"alert": 1}))
    spool.append("cmd_result", 3.6, json.dumps({"result": 1}))
    status = FakeStatus()
    t = transport(config(broker, protocol=protocol), path, status)
    t.start()
    for seq in range(4, 31):
        spool.append("summary", float(seq), doc(seq), seq=seq)
        t.notify()
    wait(lambda: len(sub.messages(f"{BASE}/summary")) >= 30, 10, "30 summaries")
    wait(lambda: t.stats()["outbox"] == 0, 5, "an empty outbox")
    sub.barrier()
    assert seqs(sub.payloads(f"{BASE}/summary")) == list(range(1, 31))
    assert sub.payloads(f"{BASE}/alert") == [b'{"alert": 1}']
    assert sub.payloads(f"{BASE}/cmd/result") == [b'{"result": 1}']
    assert spool.count(unpublished=True) == 0
    online = retained_json(broker, f"{BASE}/status")
    assert online["state"] == "online" and online["n"] == 2     # n 1 is the will
    stats = t.stats()
    assert stats["connected"] and stats["state"] == "connected"
    assert (stats["published"], stats["refused"], stats["inflight"]) == (32, 0, 0)

    t.close(5)
    sub.barrier()
    states = [json.loads(m.payload) for m in sub.messages(f"{BASE}/status")]
    assert [(s["state"], s["n"]) for s in states] == [("online", 2), ("offline", 3)]
    assert retained_json(broker, f"{BASE}/status")["n"] == 3   # not the will (n 1)
    assert t.stats()["state"] == "closed" and not t.stats()["connected"]


def test_password_login_on_the_plain_listener(broker: Broker, tmp_path: Path) -> None:
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    spool.append("summary", 1.0, doc(1), seq=1)
    with transport(config(broker, tls=False, protocol="3.1.1"), path) as t:
        wait(lambda: sub.messages(f"{BASE}/summary"), 10, "the summary")
        assert t.stats()["connected"] and not t.tls
    assert seqs(sub.payloads(f"{BASE}/summary")) == [1]


def _appender(spool: Spool, t: MqttTransport, count: int, pace: float,
              stop: threading.Event) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            if stop.is_set():
                return
            seq = spool.next_seq()
            spool.append("summary", float(seq), doc(seq), seq=seq)
            t.notify()
            time.sleep(pace)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_broker_restart_every_document_once_in_order(broker: Broker, tmp_path: Path) -> None:
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    total = 400
    t = transport(config(broker), path)
    t.start()
    stop = threading.Event()
    writer = _appender(Spool(path), t, total, 0.003, stop)
    inflight: list[int] = []

    def sample() -> None:
        while not stop.is_set():
            inflight.append(t.stats()["inflight"])
            time.sleep(0.001)
    threading.Thread(target=sample, daemon=True).start()
    try:
        wait(lambda: len(sub.messages(f"{BASE}/summary")) >= 40, 10, "40 summaries")
        broker.stop()
        wait(lambda: not t.stats()["connected"], 5, "the transport to see the broker go")
        down_at = spool.next_seq()
        wait(lambda: spool.next_seq() >= down_at + 100, 10, "100 documents while down")
        assert t.stats()["outbox"] > 0
        broker.start()
        writer.join(20)
        wait(lambda: len(sub.messages(f"{BASE}/summary")) >= total, 20, f"{total} summaries")
        wait(lambda: t.stats()["outbox"] == 0, 5, "an empty outbox")
        sub.barrier()
        got = seqs(sub.payloads(f"{BASE}/summary"))
        assert got == list(range(1, total + 1)), _describe(got, total)
        stats = t.stats()
        assert stats["reconnects"] >= 1 and stats["published"] == total
        assert 1 <= max(inflight) <= INFLIGHT
        assert "connection refused" in stats["last_error"]   # the last error of the outage
    finally:
        stop.set()
        t.close(2)


def _describe(got: list[int], total: int) -> str:
    counts = collections.Counter(got)
    return (f"missing {sorted(set(range(1, total + 1)) - set(got))[:20]}, "
            f"twice {sorted(s for s, n in counts.items() if n > 1)[:20]}")


CHILD = r"""
import json, os, sys, time
from edge_agent.config import validate
from edge_agent.transport.mqtt import MqttTransport
from edge_agent.transport.spool import Spool

raw, path, count, pace = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
renew_at = int(sys.argv[5]) if len(sys.argv) > 5 else -1   # renew_will after that many
cfg = validate(raw)
calls = 0
def status(state):
    global calls
    calls += 1
    return json.dumps({"state": state, "n": calls, "pid": os.getpid()})
spool = Spool(path)
t = MqttTransport(cfg, path, cfg["agent"]["id"], cfg["agent"]["site"], status)
t.start()
for i in range(count):
    if i == renew_at:
        t.renew_will()
    seq = spool.next_seq()
    spool.append("summary", float(seq), json.dumps({"seq": seq, "pad": "x" * 300}), seq=seq)
    t.notify()
    time.sleep(pace)
deadline = time.monotonic() + 10
while not t.stats()["connected"] and time.monotonic() < deadline:
    time.sleep(0.01)
t.close(10)
print(json.dumps(t.stats()), flush=True)
"""


def _child(raw: dict[str, Any], path: Path, count: int, pace: float,
           renew_at: int = -1) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(raw), str(path),
                             str(count), str(pace), str(renew_at)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_stream_no_loss_last_will_then_clean_offline(broker: Broker,
                                                                  tmp_path: Path) -> None:
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    raw = raw_config(broker)
    first = _child(raw, path, 5000, 0.002)
    try:
        wait(lambda: len(sub.messages(f"{BASE}/summary")) >= 80 or first.poll() is not None,
             20, "80 summaries from the first agent")
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    finally:
        if first.poll() is None:
            first.kill()
    will = json.loads(wait(lambda: [m.payload for m in sub.messages(f"{BASE}/status")
                                    if json.loads(m.payload)["state"] == "offline"],
                           5, "the last will")[0])
    assert (will["n"], will["pid"]) == (1, first.pid)    # made at start: the will
    assert retained_json(broker, f"{BASE}/status") == will
    received_before = max(seqs(sub.payloads(f"{BASE}/summary")))

    second = _child(raw, path, 20, 0.0)
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    stats = json.loads(out)
    assert stats["outbox"] == 0 and stats["state"] == "closed"
    sub.barrier()

    stored = [seq for seq, _ in Spool(path).documents()]
    got = seqs(sub.payloads(f"{BASE}/summary"))
    assert set(got) == set(stored), _describe(got, len(stored))          # no loss
    firsts = list(dict.fromkeys(got))
    assert firsts == sorted(firsts)                                       # in order
    twice = sorted(s for s, n in collections.Counter(got).items() if n > 1)
    # QoS 1 and a SIGKILL: what was in flight (sent, not yet marked) is sent again, once.
    assert len(got) - len(stored) == len(twice) <= INFLIGHT, twice
    if twice:
        assert twice == list(range(twice[0], twice[-1] + 1))              # one window
        assert twice[-1] <= received_before
        assert all(n <= 2 for n in collections.Counter(got).values())

    states = [json.loads(m.payload) for m in sub.messages(f"{BASE}/status")]
    after = [(s["state"], s["n"]) for s in states if s["pid"] == second.pid]
    assert after == [("online", 2), ("offline", 3)]                      # no will (n 1)
    assert retained_json(broker, f"{BASE}/status")["pid"] == second.pid


@pytest.mark.parametrize("case", ["no_client_cert", "unknown_server_ca", "bad_password",
                                  "no_broker"])
def test_connection_errors_are_named_once(broker: Broker, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture, case: str) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.mqtt")
    if case == "no_client_cert":
        raw = raw_config(broker, cert=False)
        state, words = "tls_error", "the broker requires a client certificate (mqtt.cert_file"
    elif case == "unknown_server_ca":
        raw = raw_config(broker, ca_file=str(CA(tmp_path / "other-ca").file), cert=False)
        state, words = "tls_error", "cannot verify the broker certificate"
    elif case == "bad_password":
        raw = raw_config(broker, tls=False)
        Path(raw["mqtt"]["password_file"]).write_text("wrong\n")
        # mosquitto answers a wrong password with 0x87 (5 in 3.1.1), not 0x86.
        state, words = "refused", "Not authorized (0x87): the broker rejects this client's credentials"
    else:
        raw = raw_config(broker, tls=False, url=f"mqtt://127.0.0.1:{free_port()}")
        state, words = "unreachable", "connection refused"
    path = tmp_path / "spool.sqlite"
    Spool(path).append("summary", 1.0, doc(1), seq=1)
    t = transport(validate(raw), path)
    t.start()
    try:
        wait(lambda: t.stats()["connect_failures"] >= 3, 10, "three failed attempts")
        stats = t.stats()
        assert stats["state"] == state and words in stats["last_error"], stats
        assert not stats["connected"] and stats["published"] == 0 and stats["outbox"] == 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and words in warnings[0].getMessage()
    finally:
        started = time.monotonic()
        t.close(5)
        assert time.monotonic() - started < 2     # nothing to flush into an unusable broker
    assert Spool(path).count(unpublished=True) == 1


def test_mqtt5_acl_refusal_is_held_with_backoff_then_delivered(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt")
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    for seq in range(1, 6):
        spool.append("summary", float(seq), doc(seq), seq=seq)
    # The agent thinks it is at site-b; the broker lets gw-1 write under site-a only.
    t = transport(config(broker, site="site-b"), path, site="site-b")
    t.start()
    try:
        wait(lambda: t.stats()["refused"] >= 16, 10, "refusals over several retries")
        stats = t.stats()
        assert stats["connected"] and stats["published"] == 0
        assert "Not authorized (0x87)" in stats["last_error"]
        assert "stay in the spool" in stats["last_error"]
        assert spool.count(unpublished=True) == 5
        refusals = [r.getMessage() for r in caplog.records if "refused a summary" in r.getMessage()]
        assert len(refusals) == 1 and r"edge-agent/site-b/gw-1/summary" in refusals[0]
        # Backoff, not a hot loop: rounds at +0.1, 0.2, 0.4, 0.8, 1, 1 s ...
        time.sleep(0.5)
        assert t.stats()["refused"] - stats["refused"] <= 2 * 6

        broker.allow(AGENT, "site-b")         # the operator fixes the ACL; no agent restart
        wait(lambda: len(sub.messages(f"{PREFIX}/site-b/{AGENT}/summary")) >= 5, 10,
             "the held summaries")
        sub.barrier()
        assert seqs(sub.payloads(f"{PREFIX}/site-b/{AGENT}/summary")) == [1, 2, 3, 4, 5]
        wait(lambda: spool.count(unpublished=True) == 0, 5, "all marked published")
        assert any("accepts summary documents" in r.getMessage() for r in caplog.records)
    finally:
        t.close(2)


def test_mqtt311_acl_refusal_is_invisible_and_loses_the_document(broker: Broker,
                                                                 tmp_path: Path) -> None:
    """MQTT 3.1.1 has no negative PUBACK: mosquitto acknowledges a denied PUBLISH and drops
    it, so the transport cannot tell. This pins that down; use MQTT 5 to see ACL errors."""
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    spool.append("summary", 1.0, doc(1), seq=1)
    t = transport(config(broker, site="site-b", protocol="3.1.1"), path, site="site-b")
    t.start()
    try:
        wait(lambda: t.stats()["published"] == 1, 10, "the PUBACK")
        sub.barrier()
        assert sub.messages(f"{PREFIX}/site-b/{AGENT}/summary") == []
        assert t.stats()["refused"] == 0 and spool.count(unpublished=True) == 0
    finally:
        t.close(2)


# --- a new last will (device key rotation), and commands ---------------------------------------

class Commands:
    """An ``on_command`` that keeps what arrives, ``(payload, ack, live)`` in arrival order."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Callable[[], None], Callable[[], bool]]] = []

    def __call__(self, payload: bytes, ack: Callable[[], None], live: Callable[[], bool]) -> None:
        self.got.append((payload, ack, live))

    def payloads(self) -> list[bytes]:
        return [p for p, _, _ in list(self.got)]


def send_commands(sub: Any, *payloads: bytes) -> None:
    infos = [sub.client.publish(f"{BASE}/cmd", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(5)
        assert info.is_published()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_renew_will_reconnects_cleanly_nothing_lost_or_sent_twice(broker: Broker, tmp_path: Path,
                                                                  protocol: str) -> None:
    """renew_will twice while documents stream: each document arrives once and in order, the
    clean DISCONNECTs publish no will, each new connection says "online" again, and commands
    still arrive."""
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    commands = Commands()
    t = MqttTransport(config(broker, protocol=protocol), path, AGENT, SITE, FakeStatus(),
                      on_command=commands)
    t.start()
    total = 300
    stop = threading.Event()
    writer = _appender(Spool(path), t, total, 0.003, stop)
    try:
        for at in (60, 150):
            wait(lambda at=at: len(sub.messages(f"{BASE}/summary")) >= at, 10, f"{at} summaries")
            t.renew_will()
        writer.join(20)
        wait(lambda: len(sub.messages(f"{BASE}/summary")) >= total, 10, f"{total} summaries")
        wait(lambda: t.stats()["outbox"] == 0, 5, "an empty outbox")
        send_commands(sub, b"after")
        wait(lambda: commands.payloads() == [b"after"], 5, "a command after the renewals")
        commands.got[0][1]()
    finally:
        stop.set()
        t.close(5)
    sub.barrier()
    got = seqs(sub.payloads(f"{BASE}/summary"))
    assert got == list(range(1, total + 1)), _describe(got, total)
    assert spool.count(unpublished=True) == 0
    states = [json.loads(m.payload) for m in sub.messages(f"{BASE}/status")]
    # n: the will made at start is 1, the one renew_will makes 3, then 5.
    assert [(s["state"], s["n"]) for s in states] == [("online", 2), ("online", 4),
                                                     ("online", 6), ("offline", 7)]
    assert t.stats()["reconnects"] == 2 and t.stats()["published"] == total


def test_sigkill_after_renew_will_leaves_the_new_will(broker: Broker, tmp_path: Path) -> None:
    sub = broker.subscriber()
    path = tmp_path / "spool.sqlite"
    child = _child(raw_config(broker), path, 5000, 0.002, renew_at=30)
    try:
        wait(lambda: any(json.loads(m.payload)["n"] == 4 for m in sub.messages(f"{BASE}/status"))
             or child.poll() is not None, 20, "online again after renew_will")
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
    wait(lambda: any(json.loads(m.payload)["state"] == "offline"
                     for m in sub.messages(f"{BASE}/status")), 5, "the last will")
    sub.barrier()
    states = [json.loads(m.payload) for m in sub.messages(f"{BASE}/status")]
    # The will made by renew_will (n 3), and never the first one (n 1).
    assert [(s["state"], s["n"]) for s in states] == [("online", 2), ("online", 4),
                                                     ("offline", 3)]
    assert retained_json(broker, f"{BASE}/status") == states[-1]


def test_commands_held_to_receive_maximum_and_acked_on_their_connection(
        broker: Broker, tmp_path: Path) -> None:
    commands = Commands()
    t = MqttTransport(config(broker), tmp_path / "spool.sqlite", AGENT, SITE, FakeStatus(),
                      on_command=commands, receive_max=4)
    sub = broker.subscriber()
    sent = [f"command {i}".encode() for i in range(10)]
    try:
        t.start()
        wait(lambda: t.stats()["connected"], 10, "connected")
        sub.barrier()
        send_commands(sub, *sent)
        wait(lambda: len(commands.got) >= 4, 5, "the first commands")
        time.sleep(0.5)
        first = list(commands.got)
        # None acknowledged: the broker holds the rest back (MQTT 5 Receive Maximum).
        assert [p for p, _, _ in first] == sent[:4]
        assert all(live() for _, _, live in first)

        t.renew_will()
        assert not any(live() for _, _, live in first)
        # Unacknowledged, the four come again on the new connection (the session is kept).
        wait(lambda: len(commands.got) >= 8, 5, "the four again")
        again = commands.got[4:8]
        assert [p for p, _, _ in again] == sent[:4] and all(live() for _, _, live in again)
        # Acks from the old connection are not sent: the packet ids now name the new copies,
        # and acknowledging one would make the broker send more.
        for _, ack, _ in first:
            ack()
        time.sleep(0.5)
        assert commands.payloads()[8:] == []

        acked = 4

        def ack_what_came() -> bool:
            nonlocal acked
            got = list(commands.got)
            for _, ack, _ in got[acked:]:
                ack()
            acked = len(got)
            return len(got) >= 14
        for _, ack, _ in again:
            ack()
        wait(ack_what_came, 5, "the rest of the commands")
        time.sleep(0.3)
        assert commands.payloads()[8:] == sent[4:]          # each once, in order
    finally:
        t.close(2)
        sub.close()
