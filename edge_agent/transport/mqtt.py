"""MQTT transport: the spool's unpublished documents to the broker, QoS 1, in order.

```
pipeline ─ spool.append ─▶ notify() ─▶ outbox thread ──publish──▶ paho network thread ─▶ broker
                                        (own Spool       ◀─on_publish (mid, reason)── PUBACK
                                         connection)  ─▶ mark_published(ids)
```

Topics are ``<prefix>/<site>/<agent_id>/<suffix>`` (``KIND_TOPICS``). ``status`` is retained:
``status_doc("online")`` on every connect, ``status_doc("offline")`` as the retained last will
and published by :meth:`close` before a clean DISCONNECT, which discards the will. Every other
document comes from the spool.

The will is signed when the connection is opened (:meth:`start`) and travels in CONNECT only:
a new device key needs a new connection. :meth:`renew_will` sends what is in flight, leaves
with a clean DISCONNECT (the broker drops the old will and publishes nothing), and connects
again the way :meth:`start` does, with a will signed by the new key; the subscriptions and the
retained "online" status follow as on any connect.

Commands (``on_command``). Each is handed over with ``ack`` (call it once its result is
stored) and ``live`` (False once the connection it came on is closing or gone). An ack is
sent on that connection only: after a reconnect the broker, which keeps the session, delivers
an unacknowledged command again with the same packet id, and an old ack could acknowledge
another message that now has that id. So a command in hand across a reconnect arrives twice,
and the executor's replay store answers the second copy. With MQTT 5 the CONNECT carries
``receive_max`` (Receive Maximum): a broker that honours it sends no more unacknowledged
commands than the agent queues.

Delivery. The spool is the only durable state; the broker session is not relied on
(``clean_start``). The outbox thread reads ``unpublished()`` in id order through its own
SQLite connection, keeps at most ``mqtt.max_inflight`` documents handed to paho and not yet
marked, and marks a document published only after its PUBACK carried a success code:
``on_publish`` runs in paho's thread holding paho's message lock, so it only queues
``(mid, reason)`` and the outbox thread marks what has been acknowledged, a batch per
``mark_published`` call, keeping fsyncs off the network thread and the SQLite connection in
one thread. paho keeps the unacknowledged QoS 1 messages of a connection and resends them, oldest first and
with the same packet ids, as soon as it reconnects; the outbox thread never sends a document
it has in flight again. So within one process nothing is published twice unless the broker
took a PUBLISH and the connection broke before its PUBACK came back (the QoS 1 window). A
restart (crash, SIGKILL, power cut) resends what was in flight or acknowledged but not yet
marked: at most ``max_inflight`` documents, the last ones before the stop, reach the
collector twice. The collector drops them by JWS hash; summaries carry ``seq``/``prev``.

Refusals. With MQTT 5 a PUBACK reason code >= 0x80 (0x87 not authorized: an ACL that does
not match the site or prefix) is counted, logged once per topic and reason at WARNING, and
the document stays unpublished. Its kind (summary, alert...) is held back for a backoff that
doubles from ``reconnect_min_s`` to ``reconnect_max_s``; then the oldest unpublished document
of that kind is tried again, so an ACL fix on the broker is picked up without a restart,
nothing is lost, and no loop runs hot. Other kinds keep flowing, and the held documents wait
in the spool, whose ``max_bytes`` bounds them. (mosquitto 2.0 with ``max_queued_messages 0``
also drops the connection after each denial; that is one more reconnect, nothing else.)
MQTT 3.1.1 has no way to refuse a PUBLISH: mosquitto acknowledges a denied one and drops it,
so the document is marked published and lost at the broker. Use MQTT 5 (the default) to see
ACL errors.

Connection problems never raise: paho retries with a backoff doubling from
``reconnect_min_s`` to ``reconnect_max_s``, and :meth:`stats` gives ``state`` (connecting,
connected, refused, tls_error, unreachable, disconnected, closed) with ``last_error`` in
words that name the key to fix. Each distinct error is logged once at WARNING, not on every
retry.
"""
from __future__ import annotations

import collections
import logging
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.commands import command_topics
from edge_agent.config import Config, ConfigError
from edge_agent.transport.spool import Spool

log = logging.getLogger("edge_agent.mqtt")

KIND_TOPICS = {"summary": "summary", "alert": "alert", "status": "status",
               "cmd_result": "cmd/result"}
RETAINED_KINDS = frozenset({"status"})
QOS = 1
NO_SUBSCRIBERS = 0x10
PORTS = {False: 1883, True: 8883}
# A connection that lived this long was healthy: its loss is news worth a WARNING again.
STABLE_S = 30.0
# Reason codes >= 0x80 are failures (MQTT 5.0 section 2.4); 3.1.1 CONNACK codes are mapped
# onto them by paho. The hint names what to check.
REASON_HINTS = {
    0x84: "the broker does not speak this protocol version (mqtt.protocol)",
    0x85: "the broker rejects the client id (agent.id)",
    0x86: "bad user name or password (mqtt.username, mqtt.password_file)",
    0x87: "the broker rejects this client's credentials (mqtt.username, mqtt.password_file, "
          "mqtt.cert_file) or its ACL denies the topic (mqtt.topic_prefix, agent.site)",
    0x88: "the broker is unavailable",
    0x89: "the broker is busy",
    0x8A: "this client is banned by the broker",
    0x8C: "bad authentication method",
    0x8E: "another client connected with the same client id (agent.id)",
    0x90: "topic name rejected (mqtt.topic_prefix, agent.site, agent.id)",
    0x95: "packet too large for the broker",
    0x97: "quota exceeded on the broker",
    0x99: "payload format rejected",
    0x9C: "the broker asks to use another server",
    0x9D: "the broker moved (mqtt.url)",
}
# A refused PUBLISH (PUBACK) is about the topic, not the login.
PUBLISH_HINTS = {
    0x87: "the broker's ACL does not let this client write this topic (mqtt.topic_prefix, "
          "agent.site, agent.id)",
}
# Tried in order against the text of a TLS error.
TLS_HINTS = (
    ("certificate required", "the broker requires a client certificate (mqtt.cert_file, mqtt.key_file)"),
    ("unknown ca", "the broker does not trust our client certificate's CA (mqtt.cert_file)"),
    ("bad certificate", "the broker rejected our client certificate (mqtt.cert_file)"),
    ("certificate unknown", "the broker rejected our client certificate (mqtt.cert_file)"),
    ("certificate expired", "a certificate has expired (ours: mqtt.cert_file)"),
    ("certificate revoked", "our client certificate is revoked (mqtt.cert_file)"),
    ("wrong version number", "the broker port does not speak TLS (mqtt.url: mqtt:// instead of mqtts://?)"),
)


def _reason_text(reason: ReasonCode, publish: bool = False) -> str:
    hint = (PUBLISH_HINTS if publish else {}).get(reason.value) or REASON_HINTS.get(reason.value)
    return f"{reason.getName()} (0x{reason.value:02X}){': ' + hint if hint else ''}"


def _tls_hint(text: str) -> str | None:
    low = text.lower().replace("_", " ")
    return next((hint for needle, hint in TLS_HINTS if needle in low), None)


def describe_connect_error(exc: BaseException | None, where: str) -> tuple[str, str]:
    """``(state, message)`` for an exception raised while opening the connection."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_error", (f"TLS: cannot verify the broker certificate of {where}: "
                             f"{exc.verify_message}; check mqtt.ca_file and that the host in "
                             "mqtt.url is the one in the broker's certificate")
    if isinstance(exc, ssl.SSLError):
        hint = _tls_hint(str(exc))
        return "tls_error", f"TLS handshake with {where} failed: {hint + ': ' if hint else ''}{exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable", f"cannot connect to {where}: connection refused (broker down or wrong port?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "unreachable", f"cannot connect to {where}: timed out"
    if isinstance(exc, socket.gaierror):
        return "unreachable", f"cannot resolve the host of {where}: {exc}"
    return "unreachable", f"cannot connect to {where}: {exc}"


def _read(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None


class MqttTransport:
    """Publishes the spool's documents; ``start()``, ``notify()`` after appends, ``close()``."""

    def __init__(self, cfg: Config, spool_path: str | Path, agent_id: str, site: str,
                 status_doc: Callable[[str], str], fsync: str | None = None,
                 on_command: Callable[[bytes, Callable[[], None], Callable[[], bool]], None]
                 | None = None, receive_max: int | None = None) -> None:
        m = cfg["mqtt"]
        if not m["url"]:
            raise ConfigError("mqtt.url", "empty: no broker to publish to")
        url = urlsplit(m["url"])
        self.tls = url.scheme == "mqtts" or bool(m["ca_file"])
        if m["cert_file"] and not self.tls:
            raise ConfigError("mqtt.cert_file", "a client certificate needs TLS: use mqtts:// "
                                                "or set mqtt.ca_file")
        self.host = url.hostname or ""
        self.port = url.port or PORTS[self.tls]
        self.where = f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
        self.v5 = m["protocol"] == "5"
        self.spool_path = Path(spool_path)
        self.spool_fsync = fsync or cfg["spool"]["fsync"]     # the agent's policy (off in replays)
        self.status_doc = status_doc
        self.base = f"{m['topic_prefix']}/{site}/{agent_id}"
        self.status_topic = f"{self.base}/status"
        self.max_inflight = m["max_inflight"]
        self.require_subscriber = m["require_subscriber"]
        self.retry_min = m["reconnect_min_s"]
        self.retry_max = max(m["reconnect_max_s"], self.retry_min)
        self.keepalive = m["keepalive_s"]

        # Fleet commands: the agent's own, its site's and the fleet's command topics. They
        # need a session the broker keeps, so a command sent while the link is down (or while
        # the agent restarts) still arrives; it is acknowledged only once its result is stored.
        self.on_command = on_command
        self.cmd_topics = (command_topics(m["topic_prefix"], site, agent_id)
                           if on_command is not None else [])
        self.session_expiry = int(cfg["fleet"]["max_ttl_s"])
        self.receive_max = receive_max
        if self.v5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id,
                                 protocol=mqtt.MQTTv5, manual_ack=bool(self.cmd_topics))
        else:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id,
                                 protocol=mqtt.MQTTv311, clean_session=not self.cmd_topics,
                                 manual_ack=bool(self.cmd_topics))
        client.on_message = self._on_message
        if self.tls:
            client.tls_set_context(self._tls_context(m))
        if m["password_file"] and not m["username"] and not self.v5:
            raise ConfigError("mqtt.password_file", "MQTT 3.1.1 sends a password only with "
                                                    "a user name: set mqtt.username")
        if m["username"] or m["password_file"]:
            password = (_read("mqtt.password_file", m["password_file"]).rstrip("\r\n")
                        if m["password_file"] else None)
            client.username_pw_set(m["username"] or None, password)
        client.reconnect_delay_set(self.retry_min, self.retry_max)  # type: ignore[arg-type]
        # Room for the retained status next to max_inflight documents, so paho never queues.
        client.max_inflight_messages_set(self.max_inflight + 2)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        self.client = client

        self._lock = threading.Lock()     # never held while calling into paho
        self._wake = threading.Event()
        self._acks: collections.deque[tuple[int, ReasonCode]] = collections.deque()
        self._status_mids: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        self._started = self._closing = self._stopping = False
        self._leaving = False             # renew_will: this connection is about to close
        self._link = 0                    # connection number; one more at every disconnect
        self._ack_lock = threading.Lock()   # a command's ack and the end of its connection
        self._connected = False
        self._connected_since = 0.0
        self._ever_connected = False
        self._window = self.max_inflight
        self._socket_error: str | None = None
        self._attempt_refused = False
        self._state = "stopped"
        self._last_error = ""
        self._logged_error: str | None = None
        self._counts = {"published": 0, "refused": 0, "reconnects": 0, "connect_failures": 0}
        self._inflight_n = 0
        self._outbox = -1
        self._busy = True
        self._rounds = 0
        self._flush_asked = self._flush_done = 0
        # Owned by the outbox thread only.
        self._inflight: dict[int, tuple[int, str, str]] = {}   # mid -> (id, kind, topic)
        self._unmarked: list[int] = []     # acknowledged, mark_published not yet committed
        self._held: dict[str, float] = {}                      # kind -> monotonic deadline
        self._backoff: dict[str, float] = {}
        self._refusal_logged: set[tuple[str, int]] = set()
        self._unknown_kinds: set[str] = set()

    @staticmethod
    def _tls_context(m: dict[str, Any]) -> ssl.SSLContext:
        # Server verification is always on: CA from mqtt.ca_file or the system store, and
        # check_hostname (the URL's host must be in the broker certificate).
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=m["ca_file"] or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("mqtt.ca_file", f"cannot load {m['ca_file']}: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if m["cert_file"]:
            try:
                ctx.load_cert_chain(m["cert_file"], m["key_file"] or None)
            except (OSError, ssl.SSLError) as exc:
                key = "mqtt.key_file" if isinstance(exc, ssl.SSLError) else "mqtt.cert_file"
                raise ConfigError(key, f"cannot load the client certificate and key: {exc}") from None
        elif m["key_file"]:
            raise ConfigError("mqtt.key_file", "given without mqtt.cert_file")
        return ctx

    # --- public interface --------------------------------------------------------------------

    def topic(self, kind: str) -> str:
        return f"{self.base}/{KIND_TOPICS[kind]}"

    @property
    def started(self) -> bool:
        return self._started and not self._stopping

    def start(self) -> None:
        if self._started:
            return
        self._connect(self.status_doc("offline"))
        self._started = True
        self._wake.set()     # a first round at once: count the outbox
        self._thread = threading.Thread(target=self._run, name="edge-agent-mqtt-outbox",
                                        daemon=True)
        self._thread.start()

    def _connect(self, will: str) -> None:
        """Open the connection in paho's thread (it retries on its own), with ``will``."""
        self.client.will_set(self.status_topic, will, qos=QOS, retain=True)
        with self._lock:
            self._state = "connecting"
        if self.v5 and self.cmd_topics:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
            if self.receive_max:
                props.ReceiveMaximum = self.receive_max
            self.client.connect_async(self.host, self.port, self.keepalive, clean_start=False,
                                      properties=props)
        elif self.v5:
            self.client.connect_async(self.host, self.port, self.keepalive, clean_start=True)
        else:
            self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def renew_will(self, timeout: float = 5.0) -> None:
        """Reconnect with a last will signed now (after a device key change); see the module
        notes. Blocks for as long as what is in flight takes to be acknowledged, at most
        ``timeout``: whatever is still in flight then stays with paho, which sends it again
        on the new connection with the same packet id, and the outbox marks it on its PUBACK.
        """
        if not self.started or self._closing:
            return
        will = self.status_doc("offline")     # before leaving: if signing fails, we stay
        log.info("mqtt: renewing the last will (new device key): reconnecting to %s", self.where)
        # Nothing more is handed to paho; what is in flight is acknowledged before the
        # DISCONNECT, so none of it is sent twice.
        self._leaving = True
        if self._connected:
            self._flush(time.monotonic() + timeout)
        self.client.disconnect()     # clean: the broker discards the old will
        self.client.loop_stop()
        # paho's thread may have been opening a connection when asked to disconnect, and
        # stopped with it open: send that one a DISCONNECT too (no-op without a socket).
        self.client.disconnect()
        with self._ack_lock:
            self._link += 1
        self._leaving = False
        self._connect(will)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        """A command: handed on with the way to acknowledge it once its result is stored."""
        mid, qos = msg.mid, msg.qos
        if self.on_command is None or msg.topic not in self.cmd_topics:
            client.ack(mid, qos)
            return
        link = self._link

        def ack() -> None:
            with self._ack_lock:     # not after the connection ended: see the module notes
                if link == self._link:
                    client.ack(mid, qos)

        def live() -> bool:
            return link == self._link and not (self._leaving or self._closing)

        self.on_command(bytes(msg.payload), ack, live)

    def notify(self) -> None:
        """New documents are in the spool. Cheap and thread-safe; never blocks."""
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"connected": self._connected, "state": self._state,
                    "last_error": self._last_error, **self._counts,
                    "inflight": self._inflight_n, "outbox": self._outbox}

    @property
    def state(self) -> str:
        return self._state

    @property
    def last_error(self) -> str:
        return self._last_error

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be sent within ``timeout``, publish a retained offline status,
        then disconnect cleanly (so the broker drops the last will)."""
        if not self._started or self._stopping:
            return
        deadline = time.monotonic() + timeout
        self._flush(deadline - min(1.0, timeout / 2))
        self._closing = True
        self._wake.set()
        if self.client.is_connected():
            try:
                info = self.client.publish(self.status_topic, self.status_doc("offline"),
                                           qos=QOS, retain=True)
                with self._lock:
                    self._status_mids[info.mid] = "offline"
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: could not publish the offline status: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(1.0, deadline - time.monotonic()))
        with self._lock:
            self._state = "closed"
            self._connected = False

    def _flush(self, until: float) -> None:
        """Wait, until ``until`` at most, for the outbox to have sent what it holds."""
        with self._lock:
            self._flush_asked += 1
            asked = self._flush_asked
        self._wake.set()
        while time.monotonic() < until:
            with self._lock:
                # A round that began after the request found nothing more to send, or
                # nothing can be sent: the broker refused us or is out of reach.
                done = self._flush_done >= asked and (
                    not self._busy or self._state not in ("connected", "connecting"))
            if done:
                return
            time.sleep(0.01)

    def __enter__(self) -> MqttTransport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- errors and state --------------------------------------------------------------------

    def _error(self, state: str, message: str, key: str | None = None,
               failed_attempt: bool = False) -> None:
        """Record an error; log it once per distinct ``key`` (the message by default)."""
        key = key or message
        with self._lock:
            if failed_attempt:
                self._counts["connect_failures"] += 1
            self._state = state
            self._last_error = message
            fresh = key != self._logged_error
            self._logged_error = key
        if fresh:
            log.warning("mqtt: %s", message)

    # --- paho callbacks (network thread) -----------------------------------------------------

    def _on_log(self, _client: mqtt.Client, _ud: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            # The only place paho names a socket error (a TLS alert after CONNECT, say).
            self._socket_error = buf.replace("failed to receive on socket: ", "")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("paho: %s", buf)

    def _on_pre_connect(self, _client: mqtt.Client, _ud: Any) -> None:
        self._attempt_refused = False
        self._socket_error = None

    def _on_connect_fail(self, _client: mqtt.Client, _ud: Any) -> None:
        # paho calls this inside its `except OSError`, so the exception is still at hand.
        state, message = describe_connect_error(sys.exc_info()[1], self.where)
        self._error(state, message, failed_attempt=True)

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode,
                    props: Any) -> None:
        if reason.is_failure:
            self._attempt_refused = True
            self._error("refused", f"broker {self.where} refused the connection: "
                                   f"{_reason_text(reason)}", failed_attempt=True)
            return
        window = self.max_inflight
        receive_max = getattr(props, "ReceiveMaximum", None) if self.v5 else None
        if receive_max:
            window = max(1, min(window, receive_max - 1))   # one slot for the status
        now = time.monotonic()
        with self._lock:
            first = not self._ever_connected
            if not first:
                self._counts["reconnects"] += 1
            self._ever_connected = True
            self._connected = True
            self._connected_since = now
            self._window = window
            self._state = "connected"
            self._socket_error = None
            quiet = self._logged_error is None and not first
            self._logged_error = None
        (log.debug if quiet else log.info)(
            "mqtt: connected to %s (MQTT %s%s)", self.where, "5" if self.v5 else "3.1.1",
            ", TLS" if self.tls else "")
        if self._closing:
            return
        try:
            online = self.status_doc("online")
        except Exception:
            log.exception("mqtt: status_doc('online') failed")
            online = None
        if online is not None:
            info = client.publish(self.status_topic, online, qos=QOS, retain=True)
            with self._lock:
                self._status_mids[info.mid] = "online"
        if self.cmd_topics:
            client.subscribe([(t, QOS) for t in self.cmd_topics])
        self._wake.set()

    def _on_disconnect(self, _client: mqtt.Client, _ud: Any, flags: Any, reason: ReasonCode,
                       _props: Any) -> None:
        now = time.monotonic()
        with self._ack_lock:
            self._link += 1          # acks of this connection's commands are not sent now
        with self._lock:
            was = self._connected
            self._connected = False
            if was and now - self._connected_since >= STABLE_S:
                self._logged_error = None
        sock = self._socket_error
        self._socket_error = None
        if (self._closing or self._leaving) and not reason.is_failure:
            return
        if was:
            if flags.is_disconnect_packet_from_server:
                why = f"the broker disconnected us: {_reason_text(reason)}"
            else:
                why = sock or "the connection closed (broker stopped, or the network is down)"
            self._error("disconnected", f"connection to {self.where} lost: {why}; reconnecting")
        elif self._attempt_refused:
            pass    # on_connect said why
        elif sock and ("SSL" in sock or "alert" in sock):
            hint = _tls_hint(sock)
            self._error("tls_error", f"TLS with {self.where} failed: "
                                     f"{hint + ': ' if hint else ''}{sock}", failed_attempt=True)
        else:
            self._error("disconnected", f"{self.where} closed the connection before accepting "
                                        f"it: {sock or reason.getName()}", failed_attempt=True)
        self._wake.set()

    def _on_publish(self, _client: mqtt.Client, _ud: Any, mid: int, reason: ReasonCode,
                    _props: Any) -> None:
        # Called with paho's message lock held: only hand the ack over, never wait here.
        with self._lock:
            status = self._status_mids.pop(mid, None)
        if status is None:
            self._acks.append((mid, reason))
            self._wake.set()
        elif reason.is_failure:
            with self._lock:
                self._counts["refused"] += 1
            self._error(self._state, f"broker refused the {status} status on "
                                     f"{self.status_topic}: {_reason_text(reason, publish=True)}",
                        key=f"refused status {reason.value}")

    # --- the outbox thread -------------------------------------------------------------------

    def _run(self) -> None:
        # A connection of its own: SQLite connections are not shared across threads here,
        # and the pipeline's appends never wait for this thread (WAL: readers do not block
        # the writer; the short mark_published transactions take the write lock briefly).
        spool = Spool(self.spool_path, fsync=self.spool_fsync)
        try:
            while True:
                self._wake.wait(self._next_timeout())
                self._wake.clear()
                with self._lock:
                    asked = self._flush_asked
                try:
                    self._drain(spool)
                    if self._stopping:
                        break
                    fetched = 0
                    if self._connected and not (self._closing or self._leaving):
                        fetched = self._fill(spool)
                    self._refresh(spool, fetched, asked)
                except sqlite3.OperationalError as exc:
                    # Locked past busy_timeout, disk full, I/O error: keep what is in flight
                    # and acknowledged, and try again.
                    self._error(self._state, f"spool {self.spool_path}: {exc}; retrying")
                    if self._stopping:
                        break
                    time.sleep(self.retry_min)
        except Exception:
            log.exception("mqtt: outbox thread failed; documents stay in the spool")
            with self._lock:
                self._state = "failed"
                self._last_error = f"outbox thread failed: {sys.exc_info()[1]}"
        finally:
            spool.close()

    def _next_timeout(self) -> float:
        # Woken by notify() and every callback; the timeout ends holds and picks up documents
        # appended by another process that cannot notify.
        now = time.monotonic()
        soonest = min(self._held.values(), default=now + 1.0)
        return max(0.01, min(1.0, soonest - now))

    def _drain(self, spool: Spool) -> None:
        done = self._unmarked
        while self._acks:
            mid, reason = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            doc_id, kind, topic = entry
            # 0x10 "no matching subscribers" (MQTT 5 3.4.2.1): the broker took it and threw it
            # away (no collector subscribed, or a broker that forgot a shared subscription on
            # restart). Kept and retried like a refusal unless configured otherwise; retained
            # status documents are stored by the broker all the same.
            lost = (reason.value == NO_SUBSCRIBERS and self.require_subscriber
                    and kind not in RETAINED_KINDS)
            if not reason.is_failure and not lost:
                done.append(doc_id)
                if kind in self._backoff:
                    del self._backoff[kind]
                    self._refusal_logged = {k for k in self._refusal_logged if k[0] != kind}
                    log.info("mqtt: the broker accepts %s documents on %s again", kind, topic)
            else:
                self._refused(kind, topic, reason)
        if done:
            spool.mark_published(done)
            with self._lock:
                self._counts["published"] += len(done)
            self._unmarked = []

    def _refused(self, kind: str, topic: str, reason: ReasonCode) -> None:
        now = time.monotonic()
        if self._held.get(kind, 0.0) <= now:   # one step of backoff per retry, not per document
            delay = min(self.retry_max, self._backoff.get(kind, self.retry_min / 2) * 2)
            self._backoff[kind] = delay
            self._held[kind] = now + delay
        with self._lock:
            self._counts["refused"] += 1
        key = (kind, reason.value)
        message = (f"broker refused a {kind} on {topic}: {_reason_text(reason, True)}; the {kind} "
                   f"documents stay in the spool, next try in {self._backoff[kind]:g} s")
        if key in self._refusal_logged:
            with self._lock:
                self._last_error = message
        else:
            self._refusal_logged.add(key)
            self._error(self._state, message, key=f"refused {kind} {reason.value}")

    def _fill(self, spool: Spool) -> int:
        with self._lock:
            free = self._window - len(self._inflight) - len(self._unmarked)
        if free <= 0:
            return 0
        now = time.monotonic()
        for kind in [k for k, until in self._held.items() if until <= now]:
            del self._held[kind]
        skip = {doc_id for doc_id, _, _ in self._inflight.values()} | set(self._unmarked)
        excluded = set(self._held) | self._unknown_kinds
        rows = spool.unpublished(len(skip) + free, excluded)
        fetched = 0
        for doc_id, kind, doc in rows:
            if doc_id in skip:
                continue
            fetched += 1
            if kind not in KIND_TOPICS:
                self._unknown_kinds.add(kind)
                log.error("mqtt: no topic for documents of kind %r; they stay in the spool", kind)
                continue
            topic = self.topic(kind)
            info = self.client.publish(topic, doc.encode(), qos=QOS, retain=kind in RETAINED_KINDS)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("mqtt: paho would not queue document %d: %s", doc_id,
                          mqtt.error_string(info.rc))
                break
            # paho keeps it (NO_CONN too) and sends it once connected: it is in flight now.
            self._inflight[info.mid] = (doc_id, kind, topic)
            free -= 1
            if free == 0:
                break
        with self._lock:
            self._inflight_n = len(self._inflight)
        return fetched

    def _refresh(self, spool: Spool, fetched: int, asked: int) -> None:
        active = bool(self._inflight) or bool(self._unmarked) or fetched > 0
        with self._lock:
            stale = (not active or self._outbox < 0 or self._rounds % 16 == 0
                     or asked > self._flush_done)
        # Counting is a scan of the unpublished index: not on every ack while busy.
        outbox = spool.count(unpublished=True) if stale else None
        with self._lock:
            if outbox is not None:
                self._outbox = outbox
            self._rounds += 1
            self._flush_done = asked
            # Before the first connection, documents waiting count as work for close().
            self._busy = active or (not self._connected and self._outbox > 0)
            self._inflight_n = len(self._inflight)
