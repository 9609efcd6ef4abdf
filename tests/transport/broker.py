"""A real mosquitto for tests: TLS with client certificates, a password listener, ACLs.

```
Broker(tmp_path, agents={"gw-1": "site-a"})
  plain_port  127.0.0.1, user name + password (password_file), acl_file
  tls_port    127.0.0.1, require_certificate, use_identity_as_username (the cert CN), acl_file
  ca_file, client_cert(cn) -> (cert, key)   generated with `cryptography` into the directory
  start() stop() restart() kill()           same ports every time, persistence on
  subscriber(): Subscriber                  the `collector` identity, reads edge-agent/#
```

The ACL is the one a fleet would deploy: agent ``<cn>`` of site ``<site>`` may write only
``edge-agent/<site>/<cn>/#`` and read its own ``.../cmd``; ``collector`` reads ``edge-agent/#``
and may write commands. ``test/barrier/#`` is open to the collector so a test can wait until
the broker has handled everything sent before (see :meth:`Subscriber.barrier`).

Persistence is on, so a restart keeps retained messages and the collector's session with the
messages queued for it, as a production broker would. ``max_queued_messages`` is raised from
mosquitto's default of 1000 per offline session, which a long test could hit; not to 0
("unlimited"): mosquitto 2.0.11 then closes the connection after every PUBLISH it denies (its
quota check after the PUBACK compares against 0), where it should only answer 0x87. mosquitto runs as the calling user (``user root``
when root) so it can read the files under ``tmp_path``.

Without /usr/sbin/mosquitto the helper installs it with apt-get when running as root
(scripts/setup does the same); otherwise :func:`missing_requirements` says why tests skip.
"""
from __future__ import annotations

import ctypes
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
PREFIX = "edge-agent"
COLLECTOR = "collector"
BARRIER = "test/barrier"


def _find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (MOSQUITTO if os.access(MOSQUITTO, os.X_OK) else None)


def missing_requirements() -> str | None:
    """Why no broker can run here (after trying to install one), or None."""
    if _find_mosquitto():
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mosquitto"],
                       capture_output=True, env=env, timeout=300, check=False)
        if _find_mosquitto():
            return None
    return "mosquitto is not installed (scripts/setup installs it: apt-get install mosquitto)"


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl   # looked up here, not in the child
except (OSError, AttributeError):   # not Linux
    _PRCTL = None  # type: ignore[assignment]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started us dies (a pytest run
    killed by a timeout must not leave brokers behind). PR_SET_PDEATHSIG is 1 (prctl(2)).
    Only a foreign call here, no Python-level locks, so it is safe after fork with threads."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- certificates ---------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class CA:
    """A test certificate authority (ECDSA P-256: fast to generate, fine for OpenSSL 1.1+)."""

    def __init__(self, directory: Path, cn: str = "edge-agent test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.file = self.dir / "ca.crt"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        crt, key_file = self.dir / f"{cn}.crt", self.dir / f"{cn}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return crt, key_file


# --- the broker -----------------------------------------------------------------------------

def _password_line(user: str, password: str) -> str:
    """A mosquitto password file line ($6$: SHA-512 of password + salt, which 2.x reads)."""
    import base64
    import hashlib
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


class Broker:
    """One mosquitto process with a plain (password) and a TLS (client certificate) listener."""

    def __init__(self, directory: Path, agents: dict[str, str] | None = None,
                 passwords: dict[str, str] | None = None) -> None:
        """``agents``: certificate CN (or user name) -> the site it may publish for."""
        problem = missing_requirements()
        if problem:
            raise RuntimeError(problem)
        self.exe = _find_mosquitto() or MOSQUITTO
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.grants = {cn: {site} for cn, site in (agents or {}).items()}
        self.passwords = dict(passwords or {})
        self.plain_port = free_port()
        self.tls_port = free_port()
        self.ca = CA(self.dir / "pki")
        self.ca_file = self.ca.file
        self.server_cert = self.ca.issue("localhost", server=True)
        self._client_certs: dict[str, tuple[Path, Path]] = {}
        self.proc: subprocess.Popen | None = None
        self.log_file = self.dir / "mosquitto.log"
        self._subscribers: list[Subscriber] = []
        self._write_config()

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        """``(cert, key)`` for identity ``cn``, made on first use."""
        if cn not in self._client_certs:
            self._client_certs[cn] = self.ca.issue(cn)
        return self._client_certs[cn]

    def password_file(self, user: str) -> Path:
        """A file holding ``user``'s password, as an agent's mqtt.password_file would."""
        path = self.dir / f"{user}.password"
        path.write_text(self.passwords[user] + "\n")
        path.chmod(0o600)
        return path

    def _write_config(self) -> None:
        acl = [f"user {COLLECTOR}", f"topic read {PREFIX}/#", f"topic write {PREFIX}/+/+/cmd",
               f"topic write {PREFIX}/+/cmd", f"topic write {PREFIX}/cmd",
               f"topic readwrite {BARRIER}/#", ""]
        for cn, sites in self.grants.items():
            acl.append(f"user {cn}")
            for site in sorted(sites):
                acl += [f"topic write {PREFIX}/{site}/{cn}/#", f"topic read {PREFIX}/{site}/{cn}/cmd",
                        f"topic read {PREFIX}/{site}/cmd"]
            acl.append(f"topic read {PREFIX}/cmd")
            acl.append("")
        (self.dir / "acl").write_text("\n".join(acl))
        (self.dir / "passwd").write_text(
            "".join(_password_line(u, p) for u, p in self.passwords.items()))
        (self.dir / "passwd").chmod(0o600)
        cert, key = self.server_cert
        (self.dir / "data").mkdir(exist_ok=True)
        user = "user root\n" if os.geteuid() == 0 else ""
        (self.dir / "mosquitto.conf").write_text(f"""\
{user}per_listener_settings true
persistence true
persistence_location {self.dir / 'data'}/
persistence_file mosquitto.db
autosave_interval 1
max_queued_messages 100000
log_dest file {self.log_file}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {self.plain_port} {HOST}
allow_anonymous false
password_file {self.dir / 'passwd'}
acl_file {self.dir / 'acl'}

listener {self.tls_port} {HOST}
allow_anonymous false
cafile {self.ca_file}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
acl_file {self.dir / 'acl'}
""")

    def allow(self, cn: str, site: str) -> None:
        """Let ``cn`` publish for ``site`` too, as an operator fixing the ACL would (SIGHUP:
        mosquitto reloads its configuration and ACL without dropping clients)."""
        self.grants.setdefault(cn, set()).add(site)
        self._write_config()
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        assert not self.running, "broker already running"
        self.proc = subprocess.Popen([self.exe, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509
        try:
            self._wait_listening(timeout)
        except BaseException:
            self.kill()          # a fixture that fails in set-up gets no teardown
            raise

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pending = {self.plain_port, self.tls_port}
        while pending:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}"
                                   f"{self.log_tail()}")
            for port in sorted(pending):   # a copy: found ports leave the set
                try:
                    socket.create_connection((HOST, port), timeout=0.2).close()
                    pending.discard(port)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {sorted(pending)}: "
                                   f"{self.log_tail()}")
            if pending:
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto closes its clients and writes its persistence file."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye and nothing saved since the last autosave."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        for sub in self._subscribers:
            sub.close()
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nmosquitto log:\n" + "\n".join(text)

    def url(self, tls: bool = True) -> str:
        return f"mqtts://{HOST}:{self.tls_port}" if tls else f"mqtt://{HOST}:{self.plain_port}"

    def subscriber(self, topic: str = f"{PREFIX}/#", client_id: str | None = None,
                   persistent: bool = True) -> Subscriber:
        sub = Subscriber(self, topic, client_id or f"{COLLECTOR}-{uuid.uuid4().hex[:8]}",
                         persistent)
        self._subscribers.append(sub)
        return sub

    def retained(self, topic: str, timeout: float = 5.0) -> bytes | None:
        """The payload retained on ``topic`` now (None when there is none), read by a new client."""
        with self.subscriber(topic, persistent=False) as sub:
            sub.barrier(timeout)
            msgs = [m for m in sub.messages() if m.topic == topic and m.retain]
            return msgs[-1].payload if msgs else None


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    dup: bool
    qos: int


class Subscriber:
    """A collector: TLS with the ``collector`` certificate, QoS 1, a session that survives
    broker restarts (``clean_session`` off, MQTT 3.1.1), collecting every message received.

    Like a real collector it drops a broker *redelivery* of a message it already has: one with
    the DUP flag whose topic and payload it received before. A broker that restarts before it
    reads our PUBACK sends the message again with DUP set. DUP is set by the broker only for
    its own retransmissions to us, never copied from the publisher's PUBLISH (MQTT 3.1.1
    section 3.3.1.1; mosquitto does so), so this never hides a duplicate the agent sent.
    ``messages()`` is the collector's view, ``redelivered()`` what it dropped.
    """

    def __init__(self, broker: Broker, topic: str, client_id: str, persistent: bool) -> None:
        self.broker = broker
        self.topic = topic
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._redelivered: list[Received] = []
        self._seen: set[tuple[str, bytes]] = set()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=not persistent)
        cert, key = broker.client_cert(COLLECTOR)
        self.client.tls_set(ca_certs=str(broker.ca_file), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(HOST, broker.tls_port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"collector could not subscribe{broker.log_tail()}")

    def _on_connect(self, client: mqtt.Client, _ud: object, flags: mqtt.ConnectFlags,
                    reason: object, _props: object) -> None:
        if not flags.session_present:
            client.subscribe([(self.topic, 1), (f"{BARRIER}/#", 1)])
        else:
            self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup),
                            msg.qos)
        key = (received.topic, received.payload)
        with self._lock:
            if received.dup and key in self._seen:
                self._redelivered.append(received)
            else:
                self._seen.add(key)
                self._messages.append(received)

    def redelivered(self) -> list[Received]:
        with self._lock:
            return list(self._redelivered)

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages(topic)]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0,
                 what: str = "messages") -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if predicate(msgs):
                return msgs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; have {len(msgs)} message(s)")
            time.sleep(0.01)

    def barrier(self, timeout: float = 10.0) -> None:
        """Return once the broker has routed to us everything it had before this call."""
        token = uuid.uuid4().hex.encode()
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise AssertionError("collector is not connected")
            time.sleep(0.01)
        self.client.publish(f"{BARRIER}/x", token, qos=1)
        self.wait_for(lambda ms: any(m.payload == token for m in ms), timeout, "the barrier")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
